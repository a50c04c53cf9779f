"""Static checks of the monitoring: the Grafana dashboard, the Prometheus scrape config and the
optional compose monitoring services.

Nothing here runs Grafana or Prometheus. The metric definitions are read from the source with
`ast` (no service module is imported): every `Counter(...)`, `Gauge(...)`, `Histogram(...)` and
`Summary(...)` of prometheus_client with a literal name. The dashboard's PromQL must name only
series those definitions expose (prometheus_client adds `_total` to counters and `_bucket`,
`_sum`, `_count` to histograms), use `rate`/`increase` on counters only, take quantiles from
`_bucket` with `sum by (le)`, and group by labels the metrics have; every metric defined in the
code must appear in at least one panel.
"""

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstream.stream.contracts import metrics as metrics_contract

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_FILE = GRAFANA / "recstream-dashboard.json"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
MONITORING_FILE = COMPOSE_DIR / "docker-compose.monitoring.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus.yml"
TF_MONITORING_CONFIG = COMPOSE_DIR / "tf-serving" / "monitoring.config"

SOURCE_DIRS = ("ingest", "recommender", "retrain", "updater", "stream", "deploy")
METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary"}
DATASOURCE_UID = "${DS_PROMETHEUS}"
SERVICES = ("ingest", "scheduler", "updater", "scorer")
STAGE_ROWS = {"Ingest", "Retrain / scheduler", "Updater", "Scorer", "Drift", "TF Serving"}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# TF Serving's own metrics (tensorflow_serving/servables/tensorflow/util.cc and TensorFlow's
# saved_model loader): name -> (type, labels). They exist only with the real tensorflow/serving.
TF_SERVING_METRICS = {
    ":tensorflow:serving:request_count": ("counter", {"model_name", "status"}),
    ":tensorflow:serving:request_latency": ("histogram", {"model_name", "API", "entrypoint"}),
    ":tensorflow:serving:runtime_latency": ("histogram", {"model_name", "API", "runtime"}),
    ":tensorflow:cc:saved_model:load_attempt_count": ("counter", {"model_path", "status"}),
}
COUNTING_FUNCTIONS = ("rate", "irate", "increase")


# ---------------------------------------------------------------------------------------------
# metric definitions in the source
# ---------------------------------------------------------------------------------------------
def _literal_strings(node: ast.AST | None) -> list[str] | None:
    if isinstance(node, ast.List | ast.Tuple) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [e.value for e in node.elts]
    return None


def _metric_calls(tree: ast.Module) -> Iterator[tuple[str, ast.Call]]:
    """(type, call) for each call of a prometheus_client metric class in a module."""
    local = {}  # local name -> prometheus_client class
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
            local.update({a.asname or a.name: a.name for a in node.names if a.name in METRIC_TYPES})
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name == "prometheus_client")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in local:
            yield local[func.id], node
        elif (
            isinstance(func, ast.Attribute)
            and func.attr in METRIC_TYPES
            and isinstance(func.value, ast.Name)
            and func.value.id in modules
        ):
            yield func.attr, node


def _resolve_name(node: ast.expr | None) -> ast.expr | None:
    """A name taken from the contract (`metric_names.X`, stream.contracts.metrics) as its literal."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "metric_names"
        and isinstance(getattr(metrics_contract, node.attr, None), str)
    ):
        return ast.Constant(getattr(metrics_contract, node.attr))
    return node


def defined_metrics() -> dict[str, dict[str, Any]]:
    """name as written in the code -> {type, labels, where}."""
    metrics: dict[str, dict[str, Any]] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for kind, call in _metric_calls(tree):
                name_node = (
                    call.args[0]
                    if call.args
                    else next((k.value for k in call.keywords if k.arg == "name"), None)
                )
                name_node = _resolve_name(name_node)
                assert isinstance(name_node, ast.Constant) and isinstance(name_node.value, str), (
                    f"{path.relative_to(ROOT)}:{call.lineno}: {kind} without a literal name"
                )
                labels_node = (
                    call.args[2]
                    if len(call.args) > 2
                    else next((k.value for k in call.keywords if k.arg == "labelnames"), None)
                )
                labels = [] if labels_node is None else _literal_strings(labels_node)
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                assert labels is not None, f"{where}: labelnames is not a literal list"
                assert name_node.value not in metrics, f"{name_node.value} defined twice ({where})"
                metrics[name_node.value] = {"type": kind.lower(), "labels": set(labels), "where": where}
    return metrics


def exposed_series(name: str, kind: str) -> set[str]:
    """The series names prometheus_client exposes for a metric (without the `_created` ones)."""
    if kind == "counter":
        return {name.removesuffix("_total") + "_total"}
    if kind == "histogram":
        return {name + suffix for suffix in ("_bucket", "_sum", "_count")}
    if kind == "summary":
        return {name, name + "_sum", name + "_count"}
    return {name}


@pytest.fixture(scope="module")
def metrics() -> dict[str, dict[str, Any]]:
    return defined_metrics()


@pytest.fixture(scope="module")
def series(metrics) -> dict[str, dict[str, Any]]:
    """Every series name the dashboard may use -> {metric, type, labels, suffix}."""
    out: dict[str, dict[str, Any]] = {}
    for name, info in metrics.items():
        for s in exposed_series(name, info["type"]):
            suffix = s[len(name.removesuffix("_total")) :] if info["type"] == "counter" else s[len(name) :]
            out[s] = {"metric": name, "type": info["type"], "labels": info["labels"], "suffix": suffix}
    for name, (kind, labels) in TF_SERVING_METRICS.items():
        for s in exposed_series(name, kind) if kind == "histogram" else {name}:
            out[s] = {"metric": name, "type": kind, "labels": labels, "suffix": s[len(name) :]}
    return out


# ---------------------------------------------------------------------------------------------
# dashboard traversal
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every PromQL expression: panel targets, variables, annotations."""
    out = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append((f"${variable['name']}", query["query"] if isinstance(query, dict) else query, ""))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            out.append((annotation["name"], annotation["expr"], annotation.get("textFormat", "")))
    return out


def strip_strings(expr: str) -> str:
    """The expression with the contents of its quoted strings removed (label values, regexes)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


NAME = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "round",
    "histogram_quantile", "time", "vector", "changes", "label_values", "bool", "and", "or", "unless",
    "offset", "on", "ignoring", "group_left", "group_right", "clamp_min", "clamp_max", "abs", "delta",
    "deriv", "topk", "bottomk", "scalar", "absent",
}  # fmt: skip


def metric_names(expr: str) -> list[tuple[str, int]]:
    """(series name, position) of every metric name in an expression (not functions, labels, units)."""
    text = strip_strings(expr)
    text = re.sub(r"\[[^\]]*\]", lambda m: " " * len(m.group()), text)  # ranges: [5m], [$__range]
    text = re.sub(r"\{[^}]*\}", lambda m: " " * len(m.group()), text)  # matchers
    text = re.sub(r"\b(by|without)\s*\([^)]*\)", lambda m: " " * len(m.group()), text)
    text = re.sub(r"label_values\(\s*[^,()]+,\s*\w+\s*\)", lambda m: m.group().rsplit(",", 1)[0], text)
    out = []
    for match in NAME.finditer(text):
        name = match.group(1)
        following = text[match.end() :].lstrip()[:1]
        if name in PROMQL_WORDS or following == "(" or re.fullmatch(r"\d.*", name):
            continue
        out.append((name, match.start()))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", strip_strings(expr)):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels


def matcher_labels(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\{([^}]*)\}", strip_strings(expr)):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", group))
    return labels


# ---------------------------------------------------------------------------------------------
# the metric definitions themselves
# ---------------------------------------------------------------------------------------------
def test_the_services_define_their_metrics(metrics):
    prefixes = {name.split("_")[1] for name in metrics}
    assert {"ingest", "scorer", "drift", "updater", "scheduler"} <= prefixes, prefixes
    for name, info in metrics.items():
        assert re.fullmatch(r"recstream_[a-z][a-z0-9_]*", name), f"{name} ({info['where']})"
        if info["type"] == "counter":
            assert name.endswith("_total"), f"{name}: name counters *_total ({info['where']})"
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total ({info['where']})"


def test_exposed_series_names():
    assert exposed_series("a_total", "counter") == {"a_total"}
    assert exposed_series("a", "counter") == {"a_total"}
    assert exposed_series("h_seconds", "histogram") == {
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
    }
    assert exposed_series("g", "gauge") == {"g"}


def test_metric_name_extraction():
    expr = (
        "histogram_quantile(0.99, sum by (le, API) (rate(:tensorflow:serving:request_latency_bucket"
        '{model_name=~"$model"}[$__rate_interval]))) / sum(rate(recstream_x_total{a="b c"}[5m])) '
        "- time() + max(recstream_g > 0) + vector($drift_psi_threshold)"
    )
    assert [n for n, _ in metric_names(expr)] == [
        ":tensorflow:serving:request_latency_bucket",
        "recstream_x_total",
        "recstream_g",
    ]
    assert grouping_labels(expr) == {"le", "API"}
    assert matcher_labels(expr) == {"model_name", "a"}
    assert [n for n, _ in metric_names("label_values(:tensorflow:serving:request_count, model_name)")] == [
        ":tensorflow:serving:request_count"
    ]


# ---------------------------------------------------------------------------------------------
# dashboard structure
# ---------------------------------------------------------------------------------------------
def test_dashboard_is_an_importable_grafana_dashboard(dashboard):
    assert dashboard["uid"] == "recstream" and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_every_query_uses_the_templated_datasource(dashboard):
    for panel in all_panels(dashboard):
        if panel["type"] in {"row", "text"}:
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
    for item in dashboard["templating"]["list"] + dashboard["annotations"]["list"]:
        if "expr" in item or item["type"] == "query":
            assert item["datasource"]["uid"] == DATASOURCE_UID, item["name"]


def test_panels_have_unique_ids_and_fit_the_grid(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
    for panel in panels:
        if panel["type"] != "row":
            assert panel["title"] and (panel["type"] == "text" or panel.get("description")), panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_there_is_a_row_per_stage(dashboard):
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert set(rows) >= STAGE_ROWS, rows


def test_expressions_are_balanced(dashboard):
    for where, expr, _ in queries(dashboard):
        text = strip_strings(expr)
        stack = []
        for char in text:
            if char in "([{":
                stack.append(char)
            elif char in ")]}":
                assert stack and stack.pop() + char in {"()", "[]", "{}"}, (where, expr)
        assert not stack, (where, expr)


def test_variables_used_are_defined(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__interval", "__range", "__all"}
    for where, expr, _ in queries(dashboard):
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name in defined | builtin, (where, name)


# ---------------------------------------------------------------------------------------------
# dashboard <-> code
# ---------------------------------------------------------------------------------------------
def test_every_metric_in_the_dashboard_exists(dashboard, series):
    for where, expr, _ in queries(dashboard):
        names = [name for name, _ in metric_names(expr)]
        if not names:
            assert re.search(r"\bvector\(", expr), (where, expr)
        for name in names:
            assert name in series, f"{where}: {name} is not a series the code (or TF Serving) exposes"


def test_every_metric_of_the_code_has_a_panel(dashboard, metrics, series):
    used = {series[name]["metric"] for p in all_panels(dashboard) for t in p.get("targets", [])
            for name, _ in metric_names(t["expr"]) if name in series}  # fmt: skip
    missing = set(metrics) - used
    assert not missing, f"metrics without a panel: {sorted(missing)}"
    assert set(TF_SERVING_METRICS) <= used


def test_counters_and_histograms_are_rated_and_gauges_are_not(dashboard, series):
    for where, expr, _ in queries(dashboard):
        for name, position in metric_names(expr):
            info = series[name]
            before = strip_strings(expr)[:position].rstrip()
            counted = before.endswith(tuple(f"{f}(" for f in COUNTING_FUNCTIONS))
            if where.startswith("$"):  # label_values() in a variable reads labels, not samples
                continue
            cumulative = info["type"] == "counter" or info["suffix"] in {"_bucket", "_sum", "_count"}
            if cumulative:
                assert counted, f"{where}: {name} is cumulative; use rate() or increase() on it"
            else:
                assert not counted, f"{where}: {name} is a {info['type']}; rate()/increase() are for counters"


QUANTILE = re.compile(
    r"histogram_quantile\(\s*(?P<q>[0-9.]+)\s*,\s*sum by \((?P<by>[^)]*)\)\s*"
    r"\(\s*rate\(\s*(?P<name>[\w:]+_bucket)\b"
)


def test_quantiles_come_from_buckets_summed_by_le(dashboard, series):
    checked = 0
    for where, expr, _ in queries(dashboard):
        buckets = [name for name, _ in metric_names(expr) if name.endswith("_bucket")]
        found = [m for m in QUANTILE.finditer(expr)]
        assert sorted(m["name"] for m in found) == sorted(buckets), f"{where}: {expr}"
        assert expr.count("histogram_quantile(") == len(found), f"{where}: {expr}"
        for match in found:
            assert 0 < float(match["q"]) < 1, (where, match["q"])
            assert "le" in {label.strip() for label in match["by"].split(",")}, (where, expr)
            assert series[match["name"]]["type"] == "histogram", (where, match["name"])
            checked += 1
    assert checked >= 8


def test_labels_in_queries_and_legends_exist(dashboard, series):
    for where, expr, legend in queries(dashboard):
        names = [name for name, _ in metric_names(expr)]
        if not names:
            continue
        labels = set(TARGET_LABELS).union(*(series[n]["labels"] for n in names))
        if any(n.endswith("_bucket") for n in names):
            labels.add("le")
        unknown = (grouping_labels(expr) | matcher_labels(expr)) - labels
        assert not unknown, f"{where}: {sorted(unknown)} are not labels of {names}"
        grouped = grouping_labels(expr) - {"le"}
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        if re.search(r"\b(?:sum|max|min|avg|count)\b", expr) and "without" not in expr:
            assert shown <= grouped, f"{where}: legend shows {sorted(shown - grouped)}, grouped away"
        assert shown <= labels, (where, legend)


def test_threshold_lines_match_the_settings_defaults(dashboard):
    from recstream.stream.settings import FIELDS

    defaults = {field.env: field.default for field in FIELDS}
    textboxes = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "textbox"}
    assert textboxes
    for name, variable in textboxes.items():
        setting = name.upper()
        assert variable["label"] == setting
        assert float(variable["query"]) == float(defaults[setting]), name
        assert any(f"vector(${name})" in expr for _, expr, _ in queries(dashboard)), name


def test_tf_serving_panels_say_where_their_metrics_come_from(dashboard):
    for panel in all_panels(dashboard):
        exprs = " ".join(t["expr"] for t in panel.get("targets", []))
        if ":tensorflow:" in exprs:
            assert "tensorflow/serving" in panel["description"], panel["title"]


# ---------------------------------------------------------------------------------------------
# Prometheus scrape config and compose monitoring services
# ---------------------------------------------------------------------------------------------
def load_yaml(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert isinstance(doc, dict), path
    return doc


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def monitoring() -> dict:
    return load_yaml(MONITORING_FILE)


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def flag(command: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    return value


def test_prometheus_scrapes_every_service_and_tf_serving(compose):
    config = load_yaml(PROMETHEUS_FILE)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose["services"]
    for name in SERVICES:
        port = compose_env(services[name])[f"{name.upper()}_METRICS_PORT"]
        (static,) = jobs[name]["static_configs"]
        assert static["targets"] == [f"{name}:{port}"], name
        assert jobs[name].get("metrics_path", "/metrics") == "/metrics"
    tf_serving = services["tf-serving"]
    rest_port = flag(tf_serving["command"], "rest_api_port")
    path = re.search(r'path:\s*"([^"]+)"', TF_MONITORING_CONFIG.read_text(encoding="utf-8"))[1]
    (static,) = jobs["tf-serving"]["static_configs"]
    assert static["targets"] == [f"tf-serving:{rest_port}"]
    assert jobs["tf-serving"]["metrics_path"] == path
    # $__rate_interval needs the datasource to know the scrape interval
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasource["datasources"]
    assert source["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


# Same rule as test_deployments.py, plus Prometheus's `v`-prefixed release tags.
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([.-][A-Za-z0-9][A-Za-z0-9.-]*)?$")


def pinning_problem(ref: str) -> str | None:
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{ref}: no tag"
    tag = last.rsplit(":", 1)[1]
    if not EXACT_TAG.match(tag):
        return f"{ref}: tag {tag!r} is not an exact version"
    if not DIGEST.match(digest):
        return f"{ref}: third-party image without a (well-formed) digest"
    return None


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("prom/prometheus:v2.55.1@sha256:" + "a" * 64, True),
        ("grafana/grafana:11.3.0@sha256:" + "b" * 64, True),
        ("grafana/grafana:11.3.0", False),
        ("prom/prometheus:latest@sha256:" + "a" * 64, False),
        ("prom/prometheus:v2@sha256:" + "a" * 64, False),
        ("prom/prometheus@sha256:" + "a" * 64, False),
    ],
)
def test_pinning_rule(ref, pinned):
    assert (pinning_problem(ref) is None) is pinned


def test_monitoring_services_are_pinned_loopback_healthy(monitoring, compose):
    services = monitoring["services"]
    assert set(services) == {"prometheus", "grafana"}
    assert not set(services) & set(compose["services"]), "the monitoring file only adds services"
    for name, service in services.items():
        assert pinning_problem(service["image"]) is None, pinning_problem(service["image"])
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
        assert service["networks"] == ["recstream"], name
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_monitoring_references_resolve(monitoring, compose):
    volumes = set(compose.get("volumes") or {}) | set(monitoring.get("volumes") or {})
    networks = set(compose.get("networks") or {}) | set(monitoring.get("networks") or {})
    configs = {**(compose.get("configs") or {}), **(monitoring.get("configs") or {})}
    for name, service in monitoring["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).is_dir(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not defined"
        assert set(service["networks"]) <= networks, name
        for config in service.get("configs", []):
            assert config["source"] in configs, name
    for config in (monitoring.get("configs") or {}).values():
        assert (COMPOSE_DIR / config["file"]).is_file(), config
    prometheus = monitoring["services"]["prometheus"]
    (mounted,) = [
        c for c in prometheus["configs"] if c["target"] == flag(prometheus["command"], "config.file")
    ]
    assert COMPOSE_DIR / configs[mounted["source"]]["file"] == PROMETHEUS_FILE


def test_grafana_provisions_the_dashboard(monitoring):
    grafana = monitoring["services"]["grafana"]
    mounts = {m.split(":")[1]: (COMPOSE_DIR / m.split(":")[0]).resolve() for m in grafana["volumes"]}
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "recstream.yml")
    (entry,) = provider["providers"]
    assert mounts[entry["options"]["path"]] == GRAFANA.resolve()
    for kind in ("datasources", "dashboards"):
        assert mounts[f"/etc/grafana/provisioning/{kind}"] == (GRAFANA / "provisioning" / kind).resolve()
    home = compose_env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{entry['options']['path']}/{DASHBOARD_FILE.name}"
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    prometheus_port = monitoring["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["url"] == f"http://prometheus:{prometheus_port}"


def test_monitoring_credentials_and_interpolation(monitoring):
    env = compose_env(monitoring["services"]["grafana"])
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?"), "no default password"
    text = MONITORING_FILE.read_text(encoding="utf-8")
    tokens = re.findall(r"\$\$|\$\{[A-Z][A-Z0-9_]*(?::[-?][^}]*)?\}|\$.?", text)
    bare = [token for token in tokens if token != "$$" and not token.startswith("${")]
    assert not bare, bare
