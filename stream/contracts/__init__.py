"""The data contracts other programs are written against: one home for each (DESIGN.md)."""
