"""The parts of the GPU check, in the order they run: by value, what matters most first, so that the
budget cuts the least needed."""

from benchmarks.gpu_check.context import Part
from benchmarks.gpu_check.parts.gpu_tests import gpu_tests
from benchmarks.gpu_check.parts.loss_chunks import loss_chunks
from benchmarks.gpu_check.parts.muon_step import muon_step
from benchmarks.gpu_check.parts.real_run import real_run, stop_resume
from benchmarks.gpu_check.parts.train_memory import train_memory
from benchmarks.gpu_check.parts.train_step import train_step_compiled, train_step_eager

PARTS: dict[str, Part] = {p.name: p for p in (
    gpu_tests, train_step_eager, train_step_compiled, muon_step, real_run, stop_resume, loss_chunks,
    train_memory,
)}
