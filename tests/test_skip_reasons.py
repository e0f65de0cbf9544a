"""A skipped test says so: the suite's summary names each one with its reason (pytest.ini's -rs), and every skip in
tests/ carries a reason (pytest.skip's message, skipif's and importorskip's reason=) for that summary to print."""
import ast
import configparser
import pathlib
import shlex

TESTS = pathlib.Path(__file__).parent


def test_the_summary_lists_skipped_tests_with_their_reasons():
    ini = configparser.ConfigParser()
    ini.read(TESTS.parent / "pytest.ini")
    options = shlex.split(ini["pytest"]["addopts"])
    assert any(o.startswith("-r") and "s" in o[2:] for o in options), options


def reason_of(call):
    """The reason a skip call gives: its `reason=` or, for pytest.skip, its first argument; None if none."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    given = {k.arg: k.value for k in call.keywords}
    node = given.get("reason", given.get("msg", call.args[0] if name == "skip" and call.args else None))
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:  # an f-string or a name: a reason, if not a constant one
        return "<computed>"


def skip_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("skip", "skipif", "importorskip"):
                yield name, node


def test_every_skip_in_the_suite_gives_a_reason():
    missing = []
    for path in sorted(TESTS.glob("*.py")):
        text = path.read_text()
        if "skip" not in text:
            continue
        for name, call in skip_calls(ast.parse(text)):
            reason = reason_of(call)
            if not (isinstance(reason, str) and reason.strip()):
                missing.append(f"{path.name}:{call.lineno} {name}")
    assert not missing, missing
