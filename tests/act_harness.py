"""Run GitHub workflows for real with nektos/act in host mode (no Docker, no network).

The library under test is a copy of this repository's files; workflows reference it the
way a user repo does (`org/mlops-templates/actions/<step>@vX.Y.Z`) and act's
`--local-repository` maps that reference to the copy. Remote actions the workflows use
(azure/login, codeql upload-sarif, ...) are replaced by local stubs the same way.

The step package is not pip-installed for every run (minutes): the venv folder the action's
installer would use (same key, computed by actions/_lib/install.py itself) is pre-seeded with
links to this checkout's .venv, which holds the same code. tests/test_actions_act.py has one
test that runs the real installer.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ACT = BIN / "act"
sys.path.insert(0, str(ROOT / "tools"))
from gen_actions import EXTRAS, DEFAULT_EXTRAS, REPO  # noqa: E402

from mlops_steps import __version__  # noqa: E402

REF = f"v{__version__}"
PLATFORM = ["-P", "ubuntu-latest=-self-hosted", "-P", "ubuntu-24.04=-self-hosted",
            "-P", "self-hosted=-self-hosted"]
# Remote actions used by our workflows -> the inputs their stub declares.
STUBS = {
    "actions/checkout": None,  # act checks out the workspace itself in host mode
    "azure/login": ["client-id", "tenant-id", "subscription-id", "allow-no-subscriptions"],
    "github/codeql-action": ["sarif_file", "category"],
    "actions/upload-artifact": ["name", "path", "if-no-files-found", "retention-days"],
}


def repo_files(root: Path = ROOT) -> list[str]:
    """Files of the repository as a clean clone would have them (tracked + new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return sorted(f for f in out.split("\0") if f and (root / f).is_file())


def copy_repo(dest: Path) -> Path:
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def git_init(path: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "test", "--no-verify"]):
        subprocess.run(["git", *cmd], cwd=path, env=env, check=True, capture_output=True)


def seed_venvs(lib: Path, tool_cache: Path) -> None:
    """Make the actions' installer find a ready venv for every extras set (links to .venv)."""
    for extras in sorted(set(EXTRAS.values()) | {DEFAULT_EXTRAS}):
        venv = Path(subprocess.run(
            [sys.executable, str(lib / "actions" / "_lib" / "install.py"), extras, "--print-venv"],
            env={**os.environ, "RUNNER_TOOL_CACHE": str(tool_cache)}, capture_output=True, text=True,
            check=True).stdout.strip())
        (venv / "bin").mkdir(parents=True, exist_ok=True)
        for exe in ("mlops-step", "python"):
            link = venv / "bin" / exe
            if not link.exists():
                link.symlink_to(BIN / exe)
        (venv / ".mlops-steps-installed").write_text(venv.name)


def write_stubs(where: Path) -> list[str]:
    """Local stand-ins for remote actions: composite actions that only record their inputs."""
    args = []
    for repo, inputs in STUBS.items():
        if inputs is None:
            continue
        folder = where / repo.replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        action = {"name": f"stub {repo}", "description": "test stub",
                  "inputs": {i: {"description": i, "required": False, "default": ""} for i in inputs},
                  "runs": {"using": "composite", "steps": [{
                      "shell": "bash", "env": {"STUB_INPUTS": "${{ toJSON(inputs) }}"},
                      "run": "python3 -c 'import json, os; print(\"stub " + repo + ": \" + json.dumps("
                             "json.loads(os.environ[\"STUB_INPUTS\"])))' >> " + f'"{where}/stubs.log"'}]}}
        text = yaml.safe_dump(action, sort_keys=False)
        (folder / "action.yml").write_text(text)
        if repo == "github/codeql-action":  # used as github/codeql-action/upload-sarif@sha
            (folder / "upload-sarif").mkdir(exist_ok=True)
            (folder / "upload-sarif" / "action.yml").write_text(text)
        args.append((repo, folder))
    return args


def pinned_refs(*texts: str) -> dict[str, set[str]]:
    """owner/repo -> refs used in these workflow texts."""
    import re

    refs: dict[str, set[str]] = {}
    for text in texts:
        for m in re.finditer(r"uses:\s*([\w.-]+/[\w.-]+)(?:/[^@\s]*)?@([\w.-]+)", text):
            refs.setdefault(m.group(1), set()).add(m.group(2))
    return refs


@dataclass
class ActRun:
    code: int
    log: str
    results: dict

    def __repr__(self) -> str:
        keys = ("error", "❌", "failure", "Traceback", "exitcode")
        notable = [ln for ln in self.log.splitlines() if any(k in ln for k in keys)]
        return "<ActRun code={}\n{}\n---- tail:\n{}>".format(
            self.code, "\n".join(notable[-40:]), self.log[-4000:])


class ActEnv:
    """One test's sandbox: a library copy, a consumer workspace, HOME, tool cache, stubs."""

    def __init__(self, tmp: Path, lib: Path):
        self.tmp, self.lib = tmp, lib
        self.home = tmp / "home"
        self.ws = tmp / "ws"
        self.results = tmp / "results"
        for d in (self.home, self.ws, self.results):
            d.mkdir(parents=True, exist_ok=True)
        self.tool_cache = self.home / ".cache" / "act" / "tool_cache"
        seed_venvs(lib, self.tool_cache)
        self.stubs = write_stubs(tmp / "stubs")
        self.stub_log = tmp / "stubs" / "stubs.log"

    def stub_calls(self, repo: str) -> list[str]:
        """What the stub of a remote action recorded (one line per call, with its inputs as JSON)."""
        if not self.stub_log.is_file():
            return []
        return [ln for ln in self.stub_log.read_text().splitlines() if ln.startswith(f"stub {repo}:")]

    def run(self, workflow: str, event: str = "push", extra_args: tuple[str, ...] = (),
            timeout: int = 300, secrets: dict[str, str] | None = None,
            event_json: dict | None = None) -> ActRun:
        """Commit the workspace, run the workflow with act, collect result files."""
        wf = self.ws / ".github" / "workflows" / "test.yml"
        wf.parent.mkdir(parents=True, exist_ok=True)
        wf.write_text(workflow)
        if not (self.ws / ".git").exists():
            git_init(self.ws)
        else:
            subprocess.run(["git", "add", "-A"], cwd=self.ws, check=True)
            subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit",
                            "-qm", "update", "--allow-empty"], cwd=self.ws, check=True)
        texts = [workflow] + [p.read_text() for p in (self.lib / ".github" / "workflows").glob("*.yml")]
        texts += [p.read_text() for p in (self.lib / "actions").glob("*/action.yml")]
        local = []
        for repo, refs in pinned_refs(*texts).items():
            target = self.lib if repo == REPO else dict(self.stubs).get(repo)
            if target is None:
                continue
            for ref in refs:
                local += ["--local-repository", f"{repo}@{ref}={target}"]
        event_file = self.tmp / "event.json"
        event_file.write_text(json.dumps(event_json or {}))
        cmd = [str(ACT), event, "-W", str(wf), *PLATFORM, *local, "-e", str(event_file),
               "--env", f"RESULTS={self.results}", "--no-cache-server", "--action-offline-mode",
               *extra_args]
        for k, v in (secrets or {}).items():
            cmd += ["-s", f"{k}={v}"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLOPS_", "GITHUB_", "TF_BUILD", "SYSTEM_", "MLFLOW_", "RUNNER_", "ACT"))}
        env.update(HOME=str(self.home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        proc = subprocess.run(cmd, cwd=self.ws, env=env, capture_output=True, text=True, timeout=timeout)
        log = proc.stdout + proc.stderr
        (self.tmp / "act.log").write_text(log)
        assert "Skipping unsupported platform" not in log, "a runs-on label is not mapped with -P:\n" + log
        results = {}
        for f in sorted(self.results.glob("*.json")):
            results[f.stem] = json.loads(f.read_text())
        return ActRun(proc.returncode, log, results)


def record_step(job_id: str, step_id: str) -> dict:
    """A workflow step that saves another step's outcome and outputs to $RESULTS/<job>.json."""
    return {"if": "always()", "shell": "bash",
            "env": {"STEP_JSON": f"${{{{ toJSON(steps.{step_id}) }}}}"},
            "run": f'printf "%s" "$STEP_JSON" > "$RESULTS/{job_id}.json"'}
