"""The ``mas`` benchmark suite (``python benchmarks/run.py``; see docs/performance.md).

Modules::

    run.py         entry point: options, the repetition loop, the table, exit status
    scenarios.py   the scenarios a-h: jobs, metrics, units and reference figures
    repetition.py  one repetition in fresh processes; which stores the build accepts
    config.py      the generated mas.yaml, and what the build makes of it
    deploy.py      the child processes: ``mas serve``, ``redis-server``, the agents process
    agents.py      the agent-side load process (``python -m benchmarks.agents SPEC``)
    workloads.py   the measured loops run inside the agents process
    dlp.py         scenario (g), the DLP scanner alone
    procstat.py    CPU time and memory of a process, read from /proc
    report.py      the table and the JSON file of every repetition
    hotspots.py    where the server's time goes, from a ``--profile`` file
"""
