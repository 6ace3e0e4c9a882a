"""Plotly figures for the book: epsilon sliders, training curves, accuracy vs eps, tables.

Figures are built from numbers that fatlib computed (run histories, precomputed
attacks); nothing here trains or attacks. The rendered book has no kernel, so an
"epsilon slider" is a plotly slider over precomputed values: every value's traces are
in the figure and the slider switches which are visible (no animation frames).

Call :func:`setup_offline` once in a notebook: figures are then stored as plotly JSON
(for JupyterLab / VS Code) and as an HTML div + script that uses the page's local
plotly.js (the book serves it), so pages need no CDN and sliders do not auto-play.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer, PlotlyRenderer
from plotly.subplots import make_subplots

RENDERER = "fatlib"
VERDICTS = ("reproduced at reduced scale", "reproduced", "differs", "not run here")
VERDICT_COLOURS = {"reproduced": "#d9f2d9", "reproduced at reduced scale": "#eaf6d5",
                    "differs": "#fde2c8", "not run here": "#e8e8e8"}
_CONFIG = {"displaylogo": False, "responsive": True}
_TRUE, _WRONG, _OTHER = "#2ca02c", "#d62728", "#9aa5b1"


# --------------------------------------------------------------------------- rendering

class OfflineRenderer(MimetypeRenderer):
    """Stores a figure as plotly JSON and as HTML that needs the page's own plotly.js."""

    def __init__(self, config: dict | None = None):
        self.config = {**_CONFIG, **(config or {})}

    def to_mimebundle(self, fig_dict):
        bundle = PlotlyRenderer(config=self.config).to_mimebundle(dict(fig_dict))
        bundle["text/html"] = pio.to_html(fig_dict, config=self.config, auto_play=False,
                                          include_plotlyjs=False, include_mathjax=False,
                                          full_html=False, validate=False)
        return bundle


def setup_offline(set_default: bool = True) -> str:
    """Register the offline renderer as 'fatlib' (and make it the default); returns its name."""
    pio.renderers[RENDERER] = OfflineRenderer()
    if set_default:
        pio.renderers.default = RENDERER
    return RENDERER


def _layout(fig: go.Figure, title: str | None, height: int | None = None, **kw) -> go.Figure:
    fig.update_layout(template="plotly_white", title=title, height=height,
                      margin=dict(l=50, r=20, t=70 if title else 30, b=40), **kw)
    return fig


# --------------------------------------------------------------------------- sliders

def eps_label(eps: float, unit: int | None = None) -> str:
    """How an eps is written: '8/255' with unit=255, else '0.3' (3 significant digits)."""
    return f"{eps * unit:.3g}/{unit}" if unit else f"{eps:.3g}"


def eps_slider_figure(values: Sequence[float], panels: Sequence[Sequence[tuple]], *,
                      rows: int = 1, cols: int = 1, static: Sequence[tuple] = (),
                      label: str = "eps", value_labels: Sequence[str] | None = None,
                      step_titles: Sequence[str] | None = None, active: int = 0,
                      subplot_titles: Sequence[str] | None = None, specs=None,
                      column_widths=None, title: str | None = None,
                      height: int | None = None) -> go.Figure:
    """A figure with a slider over precomputed values (eps, an epoch, an angle ...).

    Args:
        values: the slider's values, one per step.
        panels: for each value, a list of (trace, row, col) shown at that step.
        rows, cols, specs, column_widths, subplot_titles: the subplot grid (make_subplots).
        static: (trace, row, col) shown at every step.
        label: the slider's name ('eps').
        value_labels: how each value is written on the slider (default: eps_label).
        step_titles: the figure title at each step (default: title).
        active: the step shown when the page loads.
    Returns:
        go.Figure whose slider switches trace visibility (no animation frames).
    """
    if len(panels) != len(values) or not values:
        raise ValueError(f"need one panel list per slider value, got {len(panels)} for "
                         f"{len(values)} values")
    fig = make_subplots(rows=rows, cols=cols, specs=specs, column_widths=column_widths,
                        subplot_titles=subplot_titles, horizontal_spacing=0.06,
                        vertical_spacing=0.08 if rows > 1 else 0.1)
    for trace, row, col in static:
        fig.add_trace(trace, row=row, col=col)
    owner = [None] * len(static)
    for i, panel in enumerate(panels):
        for trace, row, col in panel:
            trace.visible = i == active
            fig.add_trace(trace, row=row, col=col)
            owner.append(i)
    value_labels = value_labels or [eps_label(v) for v in values]
    steps = []
    for i, text in enumerate(value_labels):
        layout = {"title.text": step_titles[i]} if step_titles else {}
        visible = [o is None or o == i for o in owner]
        steps.append(dict(method="update", label=text, args=[{"visible": visible}, layout]))
    _layout(fig, step_titles[active] if step_titles else title, height)
    fig.update_layout(sliders=[dict(active=active, steps=steps, pad=dict(t=40, l=20, r=30),
                                    currentvalue=dict(prefix=f"{label} = "))])
    if all(isinstance(t, go.Image) for t in fig.data):  # a grid of images: no pixel axes
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def _numpy(a) -> np.ndarray:
    """A tensor, array or list as a float32 numpy array (on the CPU, detached)."""
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float32)


def image_png(image, scale: int = 4) -> bytes:
    """PNG bytes of one image in [0, 1] ([C, H, W] or [H, W]), enlarged ``scale`` times
    without smoothing."""
    from PIL import Image

    a = _numpy(image)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    img = Image.fromarray(a)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def magnify(delta, eps: float | None = None):
    """A perturbation shown as an image: 0.5 + delta / (2 m), m = eps or max |delta| (grey = 0)."""
    d = _numpy(delta)
    m = eps if eps else float(np.abs(d).max())
    return 0.5 + d / (2 * m) if m > 0 else np.full_like(d, 0.5)


def image_trace(image, name: str = "") -> go.Image:
    """A plotly image trace of one image in [0, 1] ([C, H, W] or [H, W]), as an enlarged PNG."""
    uri = "data:image/png;base64," + base64.b64encode(image_png(image)).decode()
    return go.Image(source=uri, name=name, hoverinfo="skip")


def image_grid(rows: dict, *, column_titles: Sequence[str] | None = None,
               title: str | None = None, row_height: int = 100) -> go.Figure:
    """A grid of images: one row per entry, one column per image (e.g. a visualisation per
    model, or an image and its gradients).

    Args:
        rows: row title -> images in [0, 1] ([K, C, H, W] or a list of [C, H, W]); every row
            has the same number of images.
        column_titles: a title per column (optional).
        title: the figure's title.
        row_height: pixels per row.
    Returns:
        go.Figure without axes.
    """
    images = {name: list(row) for name, row in rows.items()}
    cols = {len(row) for row in images.values()}
    if len(cols) != 1 or not cols or 0 in cols:
        raise ValueError(f"image_grid needs rows of the same, non-zero length; got "
                         f"{ {name: len(row) for name, row in images.items()} }")
    k = cols.pop()
    fig = make_subplots(rows=len(images), cols=k, horizontal_spacing=0.01, vertical_spacing=0.03,
                        row_titles=[name.replace(", ", ",<br>") for name in images],
                        column_titles=list(column_titles or []) or None)
    # row titles run upright beside their row: two small lines fit a row's height (one long
    # line of 16 px ran into the next row's title)
    fig.for_each_annotation(lambda a: a.update(font_size=11) if a.textangle == 90 else None)
    for r, row in enumerate(images.values(), 1):
        for c, image in enumerate(row, 1):
            fig.add_trace(image_trace(image), row=r, col=c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig.update_layout(title=title, height=120 + row_height * len(images), width=None)


def _probability_trace(probs, label: int, classes: Sequence[str], name: str) -> go.Bar:
    p = _numpy(probs).astype(np.float64)
    pred = int(p.argmax())
    colours = [_TRUE if k == label else _WRONG if k == pred else _OTHER for k in range(len(p))]
    return go.Bar(x=list(classes), y=p * 100, marker_color=colours, name=name,
                  showlegend=False, hovertemplate="%{x}: %{y:.1f}%<extra></extra>")


def attack_slider_figure(eps_values: Sequence[float], x, views: dict, label: int,
                         classes: Sequence[str], *, unit: int | None = None,
                         title: str = "", active: int | None = None) -> go.Figure:
    """Slider over eps: for each attack, x + delta, the perturbation magnified, and the
    model's class probabilities (true class green, a wrong prediction red).

    Args:
        eps_values: the slider's eps values (pixel units).
        x: the clean image in [0, 1], [C, H, W].
        views: attack name -> list over eps of (delta [C, H, W], probs [K])
            (see fatlib.widgets.sweep).
        label: the true class index.
        classes: class names.
        unit: 255 to write eps as k/255.
        active: the step shown when the page loads (default: the middle one).
    """
    names = list(views)
    active = len(eps_values) // 2 if active is None else active
    titles = []
    for name in names:
        titles += [f"{name}: x + δ", f"{name}: δ magnified", f"{name}: prediction (%)"]
    panels, step_titles = [], []
    for i, eps in enumerate(eps_values):
        panel, said = [], []
        for r, name in enumerate(names, 1):
            delta, probs = views[name][i]
            image = np.clip(_numpy(x) + _numpy(delta), 0, 1)
            p = _numpy(probs)
            panel += [(image_trace(image, name), r, 1),
                      (image_trace(magnify(delta), name), r, 2),
                      (_probability_trace(p, label, classes, name), r, 3)]
            said.append(f"{name} → {classes[int(p.argmax())]} ({100 * p.max():.0f}%)")
        panels.append(panel)
        step_titles.append(f"{title} eps = {eps_label(eps, unit)}<br><sub>true: {classes[label]}; "
                           + "; ".join(said) + "</sub>")
    fig = eps_slider_figure(eps_values, panels, rows=len(names), cols=3,
                            column_widths=[0.25, 0.25, 0.5], subplot_titles=titles,
                            value_labels=[eps_label(e, unit) for e in eps_values],
                            step_titles=step_titles, active=active,
                            height=230 * len(names) + 170)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, col=2)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, col=1)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, col=2)
    fig.update_yaxes(range=[0, 100], col=3)
    fig.update_layout(margin=dict(t=125))
    fig.update_xaxes(tickangle=-45, tickfont=dict(size=9), col=3)
    return fig


# --------------------------------------------------------------------------- curves

def line_figure(x: Sequence[float], curves: dict, *, xlabel: str, ylabel: str,
                title: str | None = None, dash: dict | None = None, vline: float | None = None,
                vline_text: str = "", x_labels: Sequence[str] | None = None,
                yrange=None, height: int = 380) -> go.Figure:
    """Lines (with markers) of several named curves over the same x values.

    Args:
        curves: name -> y values (same length as x).
        dash: name -> plotly dash style ('dash', 'dot') for some curves.
        vline: x of a dashed vertical marker (e.g. the training eps), with vline_text.
        x_labels: tick text for the x values (e.g. eps as k/255).
    """
    fig = go.Figure()
    for name, ys in curves.items():
        if len(ys) != len(x):
            raise ValueError(f"curve {name!r} has {len(ys)} values for {len(x)} x values")
        fig.add_trace(go.Scatter(x=list(x), y=list(ys), name=name, mode="lines+markers",
                                 line=dict(dash=(dash or {}).get(name))))
    if vline is not None:
        fig.add_vline(x=vline, line_dash="dash", line_color="grey", annotation_text=vline_text)
    if x_labels is not None:
        fig.update_xaxes(tickvals=list(x), ticktext=list(x_labels))
    fig.update_xaxes(title=xlabel)
    fig.update_yaxes(title=ylabel, range=yrange)
    return _layout(fig, title, height, legend=dict(orientation="h", y=-0.2))


def accuracy_vs_eps_figure(eps_values: Sequence[float], accuracies: dict, *,
                           unit: int | None = None, eps_train: float | None = None,
                           title: str | None = None) -> go.Figure:
    """Accuracy (%) against eps for several (model, attack) curves.

    Args:
        accuracies: curve name (e.g. 'FGSM-RS model, PGD-10') -> accuracy % per eps.
        unit: 255 to label eps as k/255.
        eps_train: the training eps, drawn as a dashed line.
    """
    dash = {k: "dash" for k in accuracies if "FGSM" in k.split(",")[-1]}
    return line_figure(eps_values, accuracies, xlabel="eps", ylabel="accuracy (%)", title=title,
                       dash=dash, vline=eps_train,
                       vline_text=f"training eps {eps_label(eps_train, unit)}" if eps_train else "",
                       x_labels=[eps_label(e, unit) for e in eps_values], yrange=[0, 101])


def _history_keys(history: list) -> list:
    keys = []
    for entry in history:
        for k, v in entry.items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def history_figure(histories, *, x: str = "epoch", panels: Sequence[Sequence[str]] | None = None,
                   panel_titles: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Training curves from run histories (lists of dicts, one dict per logged step).

    Args:
        histories: a history (list of dicts) or name -> history for several runs.
        x: the key on the x axis ('epoch', 'step', 'time').
        panels: groups of keys, one subplot each; default: keys with 'acc' in one panel,
            the other numeric keys in a second.
        panel_titles: a title per panel.
    """
    runs = {"": histories} if isinstance(histories, list) else dict(histories)
    keys = [k for k in _history_keys([e for h in runs.values() for e in h]) if k != x]
    if panels is None:
        acc = [k for k in keys if "acc" in k]
        rest = [k for k in keys if "acc" not in k and k not in ("lr", "time", "seconds")]
        panels = [p for p in (acc, rest) if p]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panel_titles,
                        horizontal_spacing=0.1)
    palette = pio.templates["plotly_white"].layout.colorway
    for c, keys_ in enumerate(panels, 1):
        for j, (run, history) in enumerate(runs.items()):
            for k, key in enumerate(keys_):
                points = [(e[x], e[key]) for e in history if x in e and key in e]
                if not points:
                    continue
                xs, ys = zip(*points)
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers",
                                         name=f"{run}: {key}" if run else key,
                                         line=dict(color=palette[k % len(palette)],
                                                   dash=["solid", "dash", "dot", "dashdot"][j % 4])),
                              row=1, col=c)
        fig.update_xaxes(title=x, row=1, col=c)
    return _layout(fig, title, 380, legend=dict(orientation="h", y=-0.25))


_RUN_KEYS = (("clean_acc", "clean", "#2ca02c"), ("fgsm_acc", "FGSM", "#ff7f0e"),
             ("pgd_acc", "PGD", "#1f77b4"))


def _labelled_runs(results: dict) -> list:
    """(label, run) of name -> run or list of runs (runs, records: .config, .history, .metrics);
    a run of a list of several is labelled with its seed."""
    pairs = []
    for name, items in results.items():
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        pairs += [(f"{name}, seed {r.config.seed}" if len(items) > 1 else name, r) for r in items]
    return pairs


def _x_value(entry: dict, x: str):
    """A history entry's x: the key itself, or 'minutes' of training (attack + update time)."""
    if x == "minutes" and x not in entry:
        return (entry["time_attack"] + entry["time_update"]) / 60
    return entry.get(x)


def runs_curves(results: dict, keys: dict, *, x: str = "epoch", title: str | None = None,
                height: int = 400) -> go.Figure:
    """Training curves of several runs: one panel per history key, one colour per run.

    Args:
        results: name -> run or list of runs (fatlib Run or Record; several seeds each).
        keys: history key -> panel title, e.g. {"pgd_acc": "PGD-10 accuracy (%)"}.
        x: the history key on the x axis, or 'minutes' (training time, attack + update).
    Returns:
        go.Figure; a run's traces share one legend entry.
    """
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=list(keys.values()),
                        horizontal_spacing=0.08)
    palette = pio.templates["plotly_white"].layout.colorway
    for i, (label, run) in enumerate(_labelled_runs(results)):
        for col, key in enumerate(keys, 1):
            points = [(_x_value(h, x), h[key]) for h in run.history if h.get(key) is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                     mode="lines+markers", name=label, legendgroup=label,
                                     showlegend=col == 1,
                                     line=dict(color=palette[i % len(palette)])), row=1, col=col)
    fig.update_xaxes(title=x)
    return _layout(fig, title, height, legend=dict(orientation="h", y=-0.25))


def runs_table(results: dict, *, diagnose: bool = True) -> Table:
    """One row per run: final standard, FGSM and PGD accuracy (%), the final attack, test
    images, and the catastrophic overfitting that ``fatlib.overfitting.diagnose`` finds.

    Args:
        results: name -> run or list of runs (fatlib Run or Record).
        diagnose: add the catastrophic-overfitting column (its rule reads histories of
            CIFAR-10 runs; early MNIST training at eps 0.3 trips its FGSM-PGD gap).
    """
    from fatlib import overfitting

    rows = []
    for label, run in _labelled_runs(results):
        m = run.metrics
        rows.append({"run": label, "standard": f"{m['clean_acc']:.1f}%",
                     "FGSM": f"{m['fgsm_acc']:.1f}%", "PGD": f"{m['pgd_acc']:.1f}%",
                     "final attack": m.get("attack", ""), "test images": f"{m['n']:,}"})
        if diagnose:
            rows[-1]["catastrophic overfitting"] = overfitting.diagnose(run).text
    return table(rows)


def _run_panel(value: float, run) -> list:
    """The slider panel of one run: its curves (left) and its final accuracies marked (right)."""
    curves = [(go.Scatter(x=[h["epoch"] for h in run.history], y=[h.get(k) for h in run.history],
                          mode="lines+markers", name=f"{label} during training",
                          line=dict(color=colour)), 1, 1) for k, label, colour in _RUN_KEYS]
    mark = go.Scatter(x=[value] * 3, y=[run.metrics[k] for k, _, _ in _RUN_KEYS], mode="markers",
                      marker=dict(size=14, symbol="circle-open", color="black",
                                  line=dict(width=2)), name="selected run")
    return curves + [(mark, 1, 2)]


def runs_slider(results: dict, *, label: str, value_labels: Sequence[str], x_title: str,
                active: int = 0, title: str | None = None) -> go.Figure:
    """A slider over runs that differ in one value (a step size, an eps): the selected run's
    clean / FGSM / PGD curves during training, and every run's final accuracies.

    Args:
        results: value -> run (fatlib Run or Record), in slider order.
        label: the slider's name ('alpha'); value_labels: how each value is written.
        x_title: the right panel's x axis (the values).
        active: the step shown when the page loads.
    """
    values = list(results)
    static = [(go.Scatter(x=values, y=[results[v].metrics[k] for v in values],
                          mode="lines+markers", name=f"final {name} accuracy",
                          line=dict(color=colour, dash="dot")), 1, 2)
              for k, name, colour in _RUN_KEYS]
    fig = eps_slider_figure(values, [_run_panel(v, results[v]) for v in values], rows=1, cols=2,
                            static=static, label=label, value_labels=value_labels, active=active,
                            subplot_titles=["training curves of the selected run",
                                            "final accuracy of every run"], title=title, height=480)
    fig.update_xaxes(title="epoch", row=1, col=1)
    fig.update_xaxes(title=x_title, row=1, col=2)
    return fig.update_yaxes(title="accuracy (%)", range=[0, 100])


def norm_balls_figure(eps: float, angles: Sequence[float], grads, linf_steps, l2_steps, *,
                      title: str | None = None) -> go.Figure:
    """Two-pixel picture of the threat models: the l-inf square and the l2 disc of radius
    eps, a gradient direction (slider over its angle) and the one-step perturbations.

    Args:
        angles: slider values (degrees).
        grads: per angle, the gradient (2 numbers), drawn as an arrow of length eps.
        linf_steps, l2_steps: per angle, the step of the l-inf and l2 threat models (2 numbers).
    """
    t = np.linspace(0, 2 * np.pi, 121)
    static = [(go.Scatter(x=[-eps, eps, eps, -eps, -eps], y=[-eps, -eps, eps, eps, -eps],
                          name="l-inf ball", line=dict(color="#1f77b4")), 1, 1),
              (go.Scatter(x=eps * np.cos(t), y=eps * np.sin(t), name="l2 ball",
                          line=dict(color="#ff7f0e")), 1, 1)]
    panels = []
    for g, s_inf, s_2 in zip(_numpy(grads), _numpy(linf_steps), _numpy(l2_steps)):
        g = eps * g / max(float(np.linalg.norm(g)), 1e-12)
        panels.append([
            (go.Scatter(x=[0, float(g[0])], y=[0, float(g[1])], name="gradient direction", mode="lines",
                        line=dict(color="grey", dash="dot")), 1, 1),
            (go.Scatter(x=[float(s_inf[0])], y=[float(s_inf[1])], name="l-inf step: eps·sign(g)",
                        mode="markers", marker=dict(size=12, color="#1f77b4")), 1, 1),
            (go.Scatter(x=[float(s_2[0])], y=[float(s_2[1])], name="l2 step: eps·g/‖g‖₂", mode="markers",
                        marker=dict(size=12, color="#ff7f0e", symbol="diamond")), 1, 1)])
    fig = eps_slider_figure(angles, panels, static=static, label="gradient angle",
                            value_labels=[f"{a:g}°" for a in angles], title=title, height=520)
    lim = 1.25 * eps
    fig.update_xaxes(range=[-lim, lim], title="δ₁", zeroline=True)
    fig.update_yaxes(range=[-lim, lim], title="δ₂", scaleanchor="x", zeroline=True)
    return fig


# --------------------------------------------------------------------------- tables

@dataclass
class Table:
    """An HTML table for notebooks and the book (no pandas); prints as text too."""

    columns: list
    rows: list
    row_colours: list | None = None

    def _repr_html_(self):
        head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>"
                       for c in self.columns)
        body = []
        for i, row in enumerate(self.rows):
            colour = self.row_colours[i] if self.row_colours else None
            style = f" style='background:{colour}'" if colour else ""
            body.append(f"<tr{style}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
                        + "</tr>")
        return (f'<table class="fatlib-table"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table>")

    def __repr__(self):
        cells = [list(map(str, self.columns))] + [list(map(str, r)) for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
        return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> Table:
    """A table from a list of dicts (columns: the given ones, or the keys in order)."""
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    return Table(columns, [[r.get(c, "") for c in columns] for r in rows])


def verdict_kind(verdict: str) -> str:
    """Which of VERDICTS a verdict text starts with ('differs: lr schedule' -> 'differs')."""
    for kind in VERDICTS:
        if verdict.strip().lower().startswith(kind):
            return kind
    raise ValueError(f"a verdict must start with one of {VERDICTS} (then ': reason'), "
                     f"got {verdict!r}")


def comparison_table(rows: Sequence[dict]) -> Table:
    """The paper-vs-ours table that ends every chapter.

    Args:
        rows: dicts with 'what' (the quantity), 'paper' (the paper's number), 'ours' (this
            execution's or a record's number, say which), 'settings' (where each came from)
            and 'verdict' (starts with 'reproduced', 'reproduced at reduced scale',
            'differs' or 'not run here', then ': why').
    Returns:
        Table with one coloured row per comparison.
    """
    columns = ["what", "paper", "ours", "settings", "verdict"]
    for row in rows:
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"comparison row {row} lacks {missing}; needs {columns}")
    kinds = [verdict_kind(r["verdict"]) for r in rows]
    return Table(columns, [[r[c] for c in columns] for r in rows],
                 [VERDICT_COLOURS[k] for k in kinds])
