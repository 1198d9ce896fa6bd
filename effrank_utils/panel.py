"""The interactive analysis panel: drag the band, pick the reference, toggle the rank axis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import ipywidgets as widgets
from IPython.display import display

from .analysis import Study, analyze, summary_text
from .plotting import plot_effective_rank

REFERENCE_OPTIONS = (("teacher", "teacher"), ("best student", "best_student"), ("typed value", "value"))


def panel_reference(choice: str, typed_value: float) -> str | float:
    """The reference the panel's controls describe (``value`` means the typed number)."""
    return float(typed_value) if choice == "value" else choice


@dataclass
class AnalysisPanel:
    """The panel's controls and outputs; displays as the assembled widget."""

    band: widgets.FloatRangeSlider
    reference: widgets.Dropdown
    value: widgets.BoundedFloatText
    axis: widgets.ToggleButtons
    summary: widgets.HTML
    figure: widgets.Output
    widget: widgets.VBox

    def _ipython_display_(self) -> None:
        display(self.widget)


def analysis_panel(study: Study, band: Sequence[float] = (0.85, 0.95), reference: str | float = "teacher"
                   ) -> AnalysisPanel:
    """A panel whose controls recompute region and knee (:func:`~effrank_utils.analysis.analyze`) and
    redraw the figure and the text summary on every change."""
    typed = float(reference) if not isinstance(reference, str) else study.teacher_accuracy
    band_slider = widgets.FloatRangeSlider(value=tuple(band), min=0.5, max=1.0, step=0.005, readout_format=".3f",
                                           description="band", continuous_update=False,
                                           layout=widgets.Layout(width="460px"))
    ref_choice = widgets.Dropdown(options=REFERENCE_OPTIONS,
                                  value=reference if isinstance(reference, str) else "value",
                                  description="reference")
    ref_value = widgets.BoundedFloatText(value=typed, min=1e-6, max=1.0, step=0.001, description="value",
                                         layout=widgets.Layout(width="180px"))
    axis = widgets.ToggleButtons(options=["linear", "log"], value="linear", description="rank axis")
    text = widgets.HTML()
    figure = widgets.Output()

    def update(_change: object = None) -> None:
        ref_value.disabled = ref_choice.value != "value"
        try:
            result = analyze(study, band_slider.value, panel_reference(ref_choice.value, ref_value.value),
                             n_bootstrap=0)
        except ValueError as exc:
            text.value = f"<b>Cannot compute:</b> {exc}"
            return
        text.value = summary_text(study, result)
        with figure:
            figure.clear_output(wait=True)
            display(plot_effective_rank(study, result, log_x=axis.value == "log"))

    for control in (band_slider, ref_choice, ref_value, axis):
        control.observe(update, names="value")
    update()
    box = widgets.VBox([widgets.HBox([band_slider, axis]), widgets.HBox([ref_choice, ref_value]), text, figure])
    return AnalysisPanel(band_slider, ref_choice, ref_value, axis, text, figure, box)
