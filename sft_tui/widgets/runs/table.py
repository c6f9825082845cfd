"""The runs under the draft's runs_dir, one row each as `sft-tui runs` prints them, with a mark
column: the marked runs are the ones compared."""

from __future__ import annotations

from rich.cells import cell_len
from rich.markup import escape
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from core.run_info import RunInfo
from core.runs import STARTED
from sft_tui.format.paths import cut_middle
from sft_tui.format.runs import COLUMNS, STATE_STYLES, run_row

MARK = "●"
NAME_MIN = 24
"""The run column narrows so that state, step, best and age fit the table's width (80 columns over
SSH), but not below this: the start time and some of the model's name stay. The parent, last,
may be cut; the curves' legend below the table names the runs in full."""


class RunTable(DataTable):
    DEFAULT_CSS = """
    RunTable { height: auto; max-height: 12; }
    """
    BINDINGS = [Binding("enter", "select_cursor", "Open", id="runs-table-open")]
    """Enter shows in the footer (DataTable's own hides it): it opens the run (RunsScreen.action_open)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.infos: dict[str, RunInfo] = {}
        """The shown runs by row key (their folder)."""
        self.marked: list[str] = []
        """Row keys of the marked runs, in the order they were marked (the order of the legend)."""

    def on_mount(self) -> None:
        self.add_column(" ", key="mark")
        for name in COLUMNS:
            self.add_column(name, key=name)

    def show(self, infos: list[RunInfo]) -> None:
        """Show these runs; the cursor stays on the run it was on, marks on runs still there. The
        same runs in the same order (most refreshes) are updated in place: no flicker, no cursor move."""
        current = self.current
        before = list(self.infos)
        self.infos = {str(info.paths.root): info for info in infos}
        self.marked = [key for key in self.marked if key in self.infos]
        rows = {key: self._cells(key, info) for key, info in self.infos.items()}
        self._fit_names(rows)
        # The DataTable reads markup from a str cell, and a run's name and what its files say are not
        # the app's to style: escaped, once cut to fit (a cut could split an escape from its bracket).
        rows = {key: [escape(cell) if isinstance(cell, str) else cell for cell in cells] for key, cells in rows.items()}
        if list(self.infos) == before and not self._widths_change(rows):
            for key, cells in rows.items():
                for column, cell in zip(self.columns, cells):
                    if self.get_cell(key, column) != cell:
                        self.update_cell(key, column, cell)
            return
        self.clear()
        for key, cells in rows.items():
            self.add_row(*cells, key=key)
        if current is not None and str(current.paths.root) in self.infos:
            self.move_cursor(row=self.get_row_index(str(current.paths.root)), scroll=False)

    def _widths_change(self, rows: dict[str, list]) -> bool:
        """Whether a cell of `rows` is wider or narrower than the one it replaces: cells updated in
        place keep their columns' widths, so a run that went from `running (pid 15827)` to
        `finished` showed `1700/170` and a run name cut for the old state's room."""
        return any(cell_len(str(self.get_cell(key, column))) != cell_len(str(cell))
                   for key, cells in rows.items() for column, cell in zip(self.columns, cells))

    def on_resize(self) -> None:
        self.show(list(self.infos.values()))

    def _fit_names(self, rows: dict[str, list]) -> None:
        """Shorten the run names in `rows` (their middle) where they would push the columns after
        them out of the table's width."""
        width = self.scrollable_content_region.width
        if not width or not rows:
            return
        labels = [" ", *COLUMNS]
        fixed = [i for i, label in enumerate(labels) if label not in ("run", "parent")]
        others = sum(max(cell_len(str(row[i])) for row in [labels, *rows.values()]) + 2 * self.cell_padding
                     for i in fixed)
        room = max(NAME_MIN, width - others - 2 * self.cell_padding)
        for cells in rows.values():
            cells[1] = _cut_run_name(cells[1], room)

    def _cells(self, key: str, info: RunInfo) -> list:
        name, state, *rest = run_row(info)
        return [MARK if key in self.marked else "", name, Text(state, style=STATE_STYLES.get(info.state, "")), *rest]

    @property
    def current(self) -> RunInfo | None:
        """The run under the cursor."""
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return self.infos.get(key)

    @property
    def marked_infos(self) -> list[RunInfo]:
        return [self.infos[key] for key in self.marked]

    def toggle_mark(self) -> None:
        info = self.current
        if info is None:
            return
        key = str(info.paths.root)
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
        self.update_cell(key, "mark", MARK if key in self.marked else "")

    def clear_marks(self) -> None:
        for key in self.marked:
            self.update_cell(key, "mark", "")
        self.marked = []




def _cut_run_name(name: str, room: int) -> str:
    """A run name in `room` cells: the start time kept whole, which is what tells runs of one model
    apart (cut in the middle, three runs read `20261205-00…1-deep-llama`), the rest cut in its middle."""
    started = STARTED.match(name)
    if started and cell_len(name) > room and room > started.end() + 4:
        return name[: started.end()] + cut_middle(name[started.end():], room - started.end())
    return cut_middle(name, room)
