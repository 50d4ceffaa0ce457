"""Part: pytest tests/test_gpu.py (bf16 autocast, compile, flash attention, NS on CUDA; skipped on CPU)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from typing import Any

from benchmarks.gpu_check.context import Context, failure, part, run_logged


@part("pytest tests/test_gpu.py: bf16, compile, flash attention, NS on CUDA")
def gpu_tests(ctx: Context) -> dict[str, Any]:
    junit = ctx.records / "gpu_tests.junit.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    log = ctx.records / "gpu_tests.pytest.log"
    code = run_logged(ctx, cmd, log)
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if code != 0 or counts["tests"] == 0:
        raise failure(f"pytest ({counts})", code, log)
    return {**counts, "returncode": code,
            "key": f"{counts['passed']} passed, {counts['skipped']} skipped of {counts['tests']}"}
