"""Running methods over benchmarks: tasks, graders, the code sandbox, evaluate (resumable), report, stats."""
