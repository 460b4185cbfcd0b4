""".ci/system-deps, which `make test` runs as root: it must leave the machine's services alone.

The script runs for real, with stand-ins for apt-get, id, systemctl, pkill and killall
on PATH: nothing is installed, and each stand-in records how it was called.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "system-deps"

# apt-get records its arguments and what the policy file answers while it "installs".
APT_GET = """#!/bin/bash
echo "apt-get $*" >>"$CALLS"
if [[ $1 == install ]]; then
    "$POLICY_RC_D" nginx start; echo "policy-rc.d exit $?" >>"$CALLS"
fi
"""
RECORD = '#!/bin/sh\necho "$(basename "$0") $*" >>"$CALLS"\n'


def _run(tmp_path: Path, policy: Path) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {"apt-get": APT_GET, "id": "#!/bin/sh\necho 0\n",
               "systemctl": RECORD, "pkill": RECORD, "killall": RECORD}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # What the script and the stand-ins need; no curl, so a package is "missing".
    for tool in ("basename", "chmod", "rm"):
        os.symlink(subprocess.check_output(["which", tool], text=True).strip(), bin_dir / tool)
    calls = tmp_path / "calls"
    calls.write_text("")
    result = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                            env={"PATH": str(bin_dir), "CALLS": str(calls), "POLICY_RC_D": str(policy)})
    assert result.returncode == 0, result.stderr
    return calls.read_text().splitlines()


def test_installs_with_service_starts_denied_and_stops_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    calls = _run(tmp_path, policy)
    assert any(call.startswith("apt-get install") for call in calls), calls
    assert "policy-rc.d exit 101" in calls  # nginx's default site does not start
    assert not policy.exists()  # removed after, since the script created it
    assert not [c for c in calls if c.split()[0] in ("systemctl", "pkill", "killall")], calls


def test_keeps_an_existing_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")  # the operator's own
    policy.chmod(stat.S_IRWXU)
    calls = _run(tmp_path, policy)
    assert "policy-rc.d exit 0" in calls
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
