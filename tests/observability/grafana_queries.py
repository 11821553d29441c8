"""Reading the shipped Grafana dashboards as the tests need them: every panel query and every
template variable query, with Grafana's variables expanded the way an "All" selection would
(tests/observability/test_dashboards.py and tests/stack/test_dashboards.py use this)."""
import json
import re
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "observability" / "grafana" / "dashboards"
# Grafana's built-in interval variables, at values that cover two scrapes of the stack (5 s).
BUILTINS = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}


def load():
    """{file name: dashboard JSON} of every shipped dashboard."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard):
    """Every panel, rows' children included."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def expand(expr):
    """`expr` as Grafana would send it with every variable on "All" (`.*`)."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def queries():
    """(file, panel title, expanded expr) of every panel target."""
    for name, d in load().items():
        for p in panels(d):
            for t in p.get("targets", []):
                yield name, p["title"], expand(t["expr"])


def variable_queries():
    """(file, variable, metric selector, label) of every label_values() variable."""
    for name, d in load().items():
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"{name}: variable {v['name']}: {q}"
            yield name, v["name"], m.group(1), m.group(2)
