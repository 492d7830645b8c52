"""Rich progress bar (samples, samples/s) and summary tables for the CLI."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# markup=False: tensor names and paths are the user's text ("[/bad]" must print as is).
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
out = Console(markup=False, highlight=False, soft_wrap=True)


class _Rate(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # noqa: D102
        speed = task.finished_speed or task.speed
        return f"{speed:,.0f} samples/s" if speed else "… samples/s"


@contextlib.contextmanager
def sample_progress(label: str) -> Iterator:
    """Yields (set_total, update) callables; the bar appears on the first update only,
    so runs that fail early or reuse stored histograms print no bar."""
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(), console=err
    )
    state: dict = {"total": None, "task": None}

    def set_total(total) -> None:
        state["total"] = total

    def update(done: int) -> None:
        if state["task"] is None:
            progress.start()
            state["task"] = progress.add_task(label, total=state["total"])
        progress.update(state["task"], completed=done)

    try:
        yield set_total, update
    finally:
        if state["task"] is not None:
            progress.stop()


def table(title: str, columns: list[str], rows: list[list], keep: int = 0) -> Table:
    """A compact table that reads at 80 columns; the first ``keep`` columns never wrap or
    truncate (names that tell rows apart), the others fold."""
    t = Table(
        title=Text(title),
        title_justify="left",
        show_header=any(columns),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
        collapse_padding=True,
    )
    for i, c in enumerate(columns):
        t.add_column(
            Text(c),
            no_wrap=i < keep,
            overflow="fold",
            min_width=max((len(str(r[i])) for r in rows), default=1) if i < keep else None,
        )
    for r in rows:
        t.add_row(*(Text(str(v)) for v in r))
    return t
