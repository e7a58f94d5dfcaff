"""deploy/prometheus: the alert rules are valid and fire as their unit tests say (promtool)."""

import pathlib

from .support import require_binary, run_command

RULES = pathlib.Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def test_the_alert_rules_check_and_pass_their_unit_tests():
    promtool = require_binary("promtool")
    checked = run_command(promtool, "check", "rules", str(RULES / "recallcore-rules.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_command(promtool, "test", "rules", str(RULES / "recallcore-rules.test.yml"), cwd=RULES)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_rules_name_only_metrics_the_server_exposes():
    """Every recall_* name in the rules is one the metrics module defines (a renamed metric breaks alerts)."""
    import re

    from recallcore.api import metrics

    source = pathlib.Path(metrics.__file__).read_text()
    defined = set(re.findall(r'"(recall_[a-z_]+)"', source))
    used = set(re.findall(r"\b(recall_[a-z_]+)", (RULES / "recallcore-rules.yml").read_text()))
    counters = {name.removesuffix("_total") for name in used}
    assert counters <= defined, counters - defined
