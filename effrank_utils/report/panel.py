"""The interactive analysis panel: drag the band, pick the reference, toggle the rank axis.

The panel needs no front end to run: the figure is rendered to PNG bytes in the kernel and shown in an
``ipywidgets.Image``, the summary in an ``HTML`` widget. Nothing goes through the ``Output`` widget's capture
protocol, which headless executors (papermill/nbclient) can only emulate by sending messages back to the
kernel while a cell runs -- the cause of intermittent hangs (jupyter/nbclient#312). The saved widget state holds
the image, so an executed notebook shows the figure when it is reopened.
"""

from __future__ import annotations

import html
import io
import textwrap
from dataclasses import dataclass
from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from matplotlib.figure import Figure

from ..estimate.curves import DEFAULT_BAND
from .analysis import analyze, summary_text
from .plotting import plot_effective_rank
from .study import Study

REFERENCE_OPTIONS = (("teacher", "teacher"), ("best student", "best_student"), ("typed value", "value"))
FIGURE_DPI = 100


def panel_reference(choice: str, typed_value: float) -> str | float:
    """The reference the panel's controls describe (``value`` means the typed number)."""
    return float(typed_value) if choice == "value" else choice


def message_figure(message: str) -> Figure:
    """A figure that only says ``message`` (shown instead of a figure that no longer matches the controls)."""
    fig = plt.figure(figsize=(8, 1.2))
    fig.text(0.5, 0.5, "\n".join(textwrap.wrap(message, 100)), ha="center", va="center", fontsize=9, color="C3")
    return fig


def figure_png(fig: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """``fig`` as PNG bytes; the figure is closed, so pyplot never shows it on its own."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


@dataclass
class AnalysisPanel:
    """The panel's controls and outputs; displays as the assembled widget."""

    band: widgets.FloatRangeSlider
    reference: widgets.Dropdown
    value: widgets.BoundedFloatText
    axis: widgets.ToggleButtons
    summary: widgets.HTML
    figure: widgets.Image
    widget: widgets.VBox

    def _ipython_display_(self) -> None:
        display(self.widget)


def analysis_panel(study: Study, band: Sequence[float] = DEFAULT_BAND, reference: str | float = "teacher"
                   ) -> AnalysisPanel:
    """A panel whose controls recompute region and knee (:func:`~effrank_utils.report.analysis.analyze`) and
    redraw the figure and the text summary on every change. A band or reference that cannot be analyzed shows
    the error in the text and in place of the figure, so a stale figure is never shown as current. The value box
    always shows the reference accuracy in use (rounded), editable when "typed value" is chosen."""
    typed = float(reference) if not isinstance(reference, str) else study.teacher_accuracy
    band_slider = widgets.FloatRangeSlider(value=tuple(band), min=0.5, max=1.0, step=0.005, readout_format=".3f",
                                           description="band", continuous_update=False,
                                           layout=widgets.Layout(width="520px"))
    ref_choice = widgets.Dropdown(options=REFERENCE_OPTIONS,
                                  value=reference if isinstance(reference, str) else "value",
                                  description="reference")
    ref_value = widgets.BoundedFloatText(value=round(typed, 4), min=1e-6, max=1.0, step=0.001, description="value",
                                         layout=widgets.Layout(width="180px"))
    axis = widgets.ToggleButtons(options=["linear", "log"], value="linear", style={"button_width": "60px"})
    text = widgets.HTML()
    image = widgets.Image(format="png")

    def update(_change: object = None) -> None:
        ref_value.disabled = ref_choice.value != "value"
        try:
            result = analyze(study, band_slider.value, panel_reference(ref_choice.value, ref_value.value))
        except ValueError as exc:
            text.value = f"<b>Cannot compute:</b> {html.escape(str(exc))}"
            image.value = figure_png(message_figure(f"No figure: {exc}"))
            return
        if ref_value.disabled:  # show the reference in use (without recomputing for the box's own change)
            ref_value.unobserve(update, names="value")
            ref_value.value = round(result.reference, 4)
            ref_value.observe(update, names="value")
        text.value = html.escape(summary_text(study, result))
        image.value = figure_png(plot_effective_rank(study, result, log_x=axis.value == "log"))

    for control in (band_slider, ref_choice, ref_value, axis):
        control.observe(update, names="value")
    update()
    box = widgets.VBox([band_slider, widgets.HBox([ref_choice, ref_value, widgets.Label("rank axis"), axis]), text,
                        image])
    return AnalysisPanel(band_slider, ref_choice, ref_value, axis, text, image, box)
