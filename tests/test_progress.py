"""Piped progress (issue 15, point 10): off a terminal at most one line every
few seconds, plus the final line; on a terminal one redrawn line."""

import io

from deepid2_core.progress import Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def run(stream, steps, seconds_per_step, **kw):
    clock = Clock()
    bar = Progress(steps, "work", stream=stream, clock=clock, **kw)
    for _ in range(steps):
        clock.t += seconds_per_step
        bar.update(1, "info")
    bar.close()
    return stream.getvalue()


def test_piped_progress_prints_a_line_every_few_seconds_and_the_final_line():
    out = run(io.StringIO(), 420, 0.1)  # 42 s of work
    lines = out.splitlines()
    assert len(lines) == 42 // 5 + 1, lines           # every 5 s, then the final line
    assert lines[-1].startswith("work [" + "#" * 24 + "] 420/420")
    assert all("\r" not in line for line in lines)


def test_quick_piped_work_prints_only_its_final_line():
    lines = run(io.StringIO(), 420, 0.001).splitlines()
    assert len(lines) == 1 and "420/420" in lines[0]


def test_the_final_line_can_be_left_to_the_caller_and_a_short_stop_is_shown():
    assert run(io.StringIO(), 10, 0.1, final_line=False) == ""
    s, clock = io.StringIO(), Clock()
    bar = Progress(10, "work", stream=s, clock=clock)
    bar.update(3)
    bar.close()  # stopped short: its last state, once
    bar.close()
    assert s.getvalue().splitlines() == [s.getvalue().splitlines()[0]]
    assert "3/10" in s.getvalue()


def test_a_terminal_gets_one_redrawn_line_and_disabled_prints_nothing():
    out = run(Tty(), 50, 0.05)
    assert out.count("\n") == 1 and out.count("\r") >= 20 and "50/50" in out
    assert run(io.StringIO(), 50, 1.0, enabled=False) == ""
