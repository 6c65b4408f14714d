"""Property tests: no config file or command line makes fedpet print a traceback.

Every input either is accepted (exit 0) or is refused with exit status 2 and one line
saying what was wrong. ``--dry-run`` checks the whole config without training.
"""

import contextlib
import io
import string
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpet.cli import main
from fedpet.reference import FLAGS as RUN_FLAGS
from fedpet.reference import field_docs

FIELDS: dict[str, list[str]] = {}  # a run's own fields, and each section's (of any method)
for doc in field_docs():
    section, _, name = doc.dotted.rpartition(".")
    if section:
        FIELDS.setdefault(section, []).append(name)
    else:
        FIELDS.setdefault(name, [])
FLAGS = [*RUN_FLAGS, "--set", "--overwrite", "--config", "--resume"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "none", "1e-3", "-1", "0", "nan", "inf", "lora", "full", "sgd", "iid"]),
    st.text(string.printable, max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
field_names = st.sampled_from(
    [*FIELDS, *(f"{s}.{f}" for s, fs in FIELDS.items() for f in fs), "nope", "data.nope", ""]
)
tokens = st.one_of(
    st.sampled_from(FLAGS),
    st.builds(lambda k, v: f"{k}={v}", field_names, scalars.map(str)),
    scalars.map(str),
)

# examples per property: the hypothesis profile's (150 in the full suite, fewer with --quick)
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``fedpet`` with ``argv``; any exception fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: --help exits 0, a bad argument 2
            status = int(exc.code or 0)
    return status, err.getvalue()


def check(status: int, err: str) -> None:
    assert status in (0, 2), (status, err)
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], err
    assert "Traceback" not in err


@PROPERTY
@given(st.lists(tokens, max_size=8))
def test_any_command_line_exits_0_or_2_with_one_line(argv: list[str]) -> None:
    check(*outcome(["run", "--dry-run", *argv]))


@PROPERTY
@given(st.dictionaries(field_names, values, max_size=5))
def test_any_config_file_exits_0_or_2_with_one_line(tree: dict) -> None:
    nested: dict = {}
    for key, value in tree.items():
        section, _, name = key.partition(".")
        if name and isinstance(nested.get(section, {}), dict):
            nested.setdefault(section, {})[name] = value
        else:
            nested[section] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(nested))
        check(*outcome(["run", "--dry-run", "--config", str(path)]))


@PROPERTY
@given(st.dictionaries(field_names, scalars, max_size=6))
def test_any_overrides_exit_0_or_2_with_one_line(pairs: dict) -> None:
    argv = [f"--set={k}={v}" for k, v in pairs.items()]
    check(*outcome(["run", "--dry-run", *argv]))


def test_a_valid_config_passes_and_an_invalid_one_names_its_field() -> None:
    assert outcome(["run", "--dry-run", "--rounds", "3", "--method", "bitfit"]) == (0, "")
    status, err = outcome(["run", "--dry-run", "--set", "faults.client_failure_rate=1.5"])
    assert status == 2
    assert err.strip() == (
        "fedpet run: error: faults.client_failure_rate = 1.5 is not allowed: "
        "a probability in [0, 1]"
    )
