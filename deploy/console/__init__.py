"""The operator's console: status, the live demo view, the run's timeline and its report."""
