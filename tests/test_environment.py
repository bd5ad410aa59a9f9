"""The notebooks' stored outputs were produced with the versions pinned in .ci/constraints.txt.

Another pandas prints dtypes differently, another torch may round differently: nbval would
then fail cell by cell. This test fails first, naming the packages that differ, so that the
cause is obvious. `make test` installs the pinned versions.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.version import Version

CONSTRAINTS = Path(__file__).resolve().parents[1] / ".ci" / "constraints.txt"
# the packages whose versions show in the notebooks' outputs
OUTPUT_AFFECTING = ("torch", "numpy", "pandas", "matplotlib", "transformers", "tiktoken")


def pinned() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, v = line.split("==")
            pins[name.strip().lower()] = v.strip()
    return pins


def test_versions_match_the_recorded_outputs():
    pins = pinned()
    wrong = []
    for name in OUTPUT_AFFECTING:
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong.append(f"{name}: not installed (pinned {pins[name]})")
            continue
        if Version(have).public != Version(pins[name]).public:  # 2.13.0+cpu == 2.13.0
            wrong.append(f"{name}: installed {have}, outputs recorded with {pins[name]}")
    assert not wrong, ("the notebooks' stored outputs were made with other versions; install "
                       "them with `make install-test` (pip install -c .ci/constraints.txt):\n  "
                       + "\n  ".join(wrong))
