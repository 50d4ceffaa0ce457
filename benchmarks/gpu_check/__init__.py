"""The GPU check: every measurement a short GPU window needs, as one offline script (issues 14 and 18).

    bash benchmarks/gpu_check.sh [--out DIR] [--parts a,b] [--budget S]      # on a CUDA machine
    bash benchmarks/gpu_check.sh --cpu-smoke --out DIR                       # the same, reduced, on CPU

`harness` runs the parts, each in its own process with a hard limit, and packs what they wrote;
`modes` holds the sizes and the time estimates; `parts/` holds one module per part, registered in
the order they run (by value: what matters most first). See benchmarks/README.md, "GPU check".
"""
