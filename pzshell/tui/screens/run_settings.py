"""The settings screen: the run settings (model, sparsity, data, samples, windows, device), the
search settings and the app's own options. Validated before they are taken."""

from __future__ import annotations

from dataclasses import asdict, replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from ...worker.protocol import RunSettings
from ..store import AppSettings, SearchKnobs

# (section, field, label, kind) — kind: str, float, int, int? (blank = default), a tuple of choices
RUN_FIELDS = (
    ("model", "model", "str"),
    ("sparsity_ratio", "sparsity ratio", "float"),
    ("sparsity_type", "sparsity type", "str"),
    ("calib", "calibration data", "str"),
    ("eval", "evaluation data", "str"),
    ("nsamples", "calibration samples", "int"),
    ("seqlen", "calibration window length", "int?"),
    ("eval_seqlen", "evaluation window length", "int?"),
    ("eval_windows", "evaluation windows", "int?"),
    ("device", "device", ("auto", "cpu", "cuda")),
    ("seed", "seed", "int"),
    ("refine", "mask refinement", ("none", "dsnot", "swaps")),
    ("refit", "least-squares refit", "int"),
)
SEARCH_FIELDS = (
    ("population", "population", "int"),
    ("budget", "budget (evaluations)", "int"),
    ("batch", "batch", "int"),
    ("ops", "operators", ("published", "extended")),
    ("terminals", "terminals", ("W,G,X", "W,G,X,S")),
    ("reconstruct", "reconstruct (SparseGPT)", ("none", "iterative")),
    ("nsamples", "samples for X", "int"),
    ("grad_samples", "samples for G", "int"),
    ("seqlen", "X and G window length", "int"),
    ("heldout_windows", "held-out windows", "int"),
    ("heldout_seqlen", "held-out window length", "int"),
    ("cheap_windows", "cheap-stage windows", "int"),
    ("final_top", "final re-runs", "int"),
    ("final_windows", "finals' held-out windows", "int"),
    ("reference", "finals' reference rule", "str"),
    ("margin", "margin (standard errors)", "float"),
    ("workers", "evaluator processes", "int?"),
)
HINTS = {
    "model": "smollm2, tiny, a HF directory or .gguf",
    "sparsity_type": "unstructured, 2:4, 4:8, N:M",
    "calib": "builtin, wikitext2, c4, or a file",
    "eval": "builtin, wikitext2, a file, or none",
    "seqlen": "blank: the model's default",
    "eval_windows": "blank: all",
    "refine": "swaps: least-squares (runs only)",
    "refit": "CG iterations, 0: none (30: --refit)",
}
SEARCH_HINTS = {
    "reconstruct": "iterative: as metric+iterative prunes",
    "terminals": "S: SparseGPT's column curvature",
    "final_windows": "the held-out ones, then more",
    "reference": "a formula, or none",
    "margin": "a final must beat the reference by",
    "workers": "blank: 2 on a 2+-core CPU, 1 on a GPU",
}


_WORDS = {"int": "a whole number", "int?": "a whole number or blank", "float": "a number"}


def _parse(kind, raw: str, label: str):
    """The value of one field; ValueError with the whole message (label, what was expected)."""
    raw = raw.strip()
    if kind == "str":
        if not raw:
            raise ValueError(f"{label} must not be empty")
        return raw
    if kind == "int?" and not raw:
        return None
    if kind in _WORDS:
        try:
            v = float(raw) if kind == "float" else int(raw)
        except ValueError:
            raise ValueError(f"{label}: expected {_WORDS[kind]}, got {raw!r}") from None
        if kind == "int?" and v < 1:
            raise ValueError(f"{label} must be at least 1 (or blank), got {v}")
        if kind == "int" and v < 0:
            raise ValueError(f"{label} must not be negative, got {v}")
        return v
    return raw


def validate(settings: AppSettings) -> list[str]:
    """Problems with ``settings`` (empty when it is usable)."""
    from ...engine.masks import parse_sparsity_type
    from ...engine.refine import check_swaps

    errs = []
    r = settings.run
    if not 0 <= r.sparsity_ratio < 1:
        errs.append(f"sparsity ratio must be in [0, 1), got {r.sparsity_ratio}")
    try:
        n, m = parse_sparsity_type(r.sparsity_type)
        if r.refine == "swaps":
            check_swaps(n, m)
    except Exception as e:
        errs.append(str(e))
    if r.nsamples < 1:
        errs.append("calibration samples must be at least 1")
    if r.seqlen is not None and r.seqlen < 2:
        errs.append("calibration window length must be at least 2")
    if r.refit < 0:
        errs.append(f"least-squares refit takes iterations >= 0 (0: none), got {r.refit}")
    try:
        settings.search_settings().validate()
    except Exception as e:
        errs.append(f"search: {e}")
    return errs


class SettingsScreen(ModalScreen[AppSettings | None]):
    DEFAULT_CSS = """
    SettingsScreen { align: center middle; }
    SettingsScreen > Vertical {
        width: 96%; max-width: 90; height: 96%; border: thick $primary; background: $surface;
    }
    SettingsScreen VerticalScroll { height: 1fr; padding: 0 1; }
    SettingsScreen .row { height: 1; }
    SettingsScreen .row Label { width: 27; padding: 0 1 0 0; }
    SettingsScreen .row Input, SettingsScreen .row Select { width: 24; }
    SettingsScreen .row Switch { height: 1; border: none; padding: 0; width: 6; }
    SettingsScreen .row .hint {
        width: 1fr; color: $text-muted; padding: 0 0 0 1; text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    SettingsScreen .section { text-style: bold; color: $accent; margin: 0 0 1 0; }
    SettingsScreen #settings-errors { color: $error; height: auto; padding: 0 1; }
    SettingsScreen #settings-buttons { height: 1; align-horizontal: right; padding: 0 1; }
    SettingsScreen #settings-buttons Button { margin-left: 2; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Apply", priority=True),
    ]

    def __init__(self, settings: AppSettings):
        super().__init__()
        self.settings = settings

    def _row(self, prefix: str, name: str, label: str, kind, value):
        wid = f"{prefix}-{name}"
        with Horizontal(classes="row"):
            yield Label(label)
            if isinstance(kind, tuple):
                yield Select(
                    [(c, c) for c in kind], value=value, allow_blank=False, id=wid, compact=True
                )
            else:
                yield Input("" if value is None else str(value), id=wid, compact=True)
            hints = HINTS if prefix == "run" else SEARCH_HINTS
            yield Static(hints.get(name, ""), classes="hint")

    def compose(self) -> ComposeResult:
        run = asdict(self.settings.run)
        knobs = asdict(self.settings.search)
        with Vertical():
            with VerticalScroll():
                yield Static("Runs", classes="section")
                for name, label, kind in RUN_FIELDS:
                    yield from self._row("run", name, label, kind, run[name])
                yield Static("Search", classes="section")
                for name, label, kind in SEARCH_FIELDS:
                    yield from self._row("search", name, label, kind, knobs[name])
                yield Static("App", classes="section")
                with Horizontal(classes="row"):
                    yield Label("reference rows")
                    yield Switch(self.settings.auto_reference, id="auto-reference")
                    yield Static("queue (dense) and (wanda) for new settings", classes="hint")
            yield Static("", id="settings-errors")
            with Horizontal(id="settings-buttons"):
                yield Button("Apply (ctrl+s)", id="apply", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def read(self) -> tuple[AppSettings | None, list[str]]:
        errs: list[str] = []
        run_vals, knob_vals = {}, {}
        for prefix, spec, out in (
            ("run", RUN_FIELDS, run_vals),
            ("search", SEARCH_FIELDS, knob_vals),
        ):
            for name, label, kind in spec:
                w = self.query_one(f"#{prefix}-{name}")
                raw = str(w.value)
                try:
                    out[name] = _parse(kind, raw, label)
                except ValueError as e:
                    errs.append(str(e))
        if errs:
            return None, errs
        new = AppSettings(
            run=replace(RunSettings(), **run_vals),
            search=replace(SearchKnobs(), **knob_vals),
            auto_reference=self.query_one("#auto-reference", Switch).value,
        )
        errs = validate(new)
        return (None, errs) if errs else (new, [])

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            self.action_save()
        else:
            self.dismiss(None)

    def action_save(self) -> None:
        new, errs = self.read()
        if errs:
            self.query_one("#settings-errors", Static).update("\n".join(errs))
            return
        self.dismiss(new)

    def action_cancel(self) -> None:
        self.dismiss(None)
