"""fatlib.plots, fatlib.widgets and the parameter / run-card helpers of fatlib.book."""

import io
import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
from PIL import Image

from fatlib import book, data, plots, widgets
from fatlib.threat import ThreatModel

@pytest.fixture(scope="module")
def mnist():
    images, labels, source = data.load_with_source("mnist", "test", 8)
    return data.to_float(images), labels, source


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


# --------------------------------------------------------------------------- rendering

def _slider(values=(0.1, 0.2, 0.3)):
    panels = [[(go.Scatter(x=[0, 1], y=[v, v], name=f"v{v}"), 1, 1),
               (go.Bar(x=["a"], y=[v]), 1, 2)] for v in values]
    static = [(go.Scatter(x=[0], y=[0], name="static"), 1, 1)]
    return plots.eps_slider_figure(list(values), panels, rows=1, cols=2, static=static,
                                   step_titles=[f"t{v}" for v in values])


def test_offline_renderer_stores_html_without_plotlyjs_or_autoplay():
    bundle = plots.OfflineRenderer().to_mimebundle(_slider().to_dict())
    assert "application/vnd.plotly.v1+json" in bundle
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html
    assert "<script src" not in html and "cdn." not in html and "mathjax" not in html.lower()
    assert "Plotly.animate" not in html  # auto_play=False: no animation on load
    assert len(html) < 100_000  # the 4.8 MB plotly.js is not embedded


def test_setup_offline_makes_the_renderer_the_default():
    old = pio.renderers.default
    try:
        assert plots.setup_offline() == plots.RENDERER
        assert pio.renderers.default == plots.RENDERER
        bundle = pio.renderers._build_mime_bundle(_slider().to_dict(), plots.RENDERER)
        assert "text/html" in bundle
    finally:
        pio.renderers.default = old


def test_eps_slider_figure_switches_visibility_per_step():
    fig = _slider()
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0.1", "0.2", "0.3"]
    for i, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert visible[0] is True  # the static trace
        own = visible[1:]
        assert sum(own) == 2 and own[2 * i] and own[2 * i + 1]
        assert step.args[1]["title.text"] == f"t{(0.1, 0.2, 0.3)[i]}"
    assert [t.visible for t in fig.data][1:] == [True, True, False, False, False, False]
    assert not fig.frames


def test_an_image_slider_figure_has_no_pixel_axes_a_plot_keeps_its_axes():
    image = torch.rand(3, 4, 4)
    images = plots.eps_slider_figure([1, 2], [[(plots.image_trace(image), 1, 1)]] * 2,
                                     label="steps", value_labels=["1", "2"])
    assert images.layout.xaxis.showticklabels is False and images.layout.yaxis.showticklabels is False
    assert _slider().layout.xaxis.showticklabels is None


def test_eps_slider_figure_checks_lengths():
    with pytest.raises(ValueError, match="one panel list per slider value"):
        plots.eps_slider_figure([0.1, 0.2], [[]])


def test_eps_label():
    assert plots.eps_label(8 / 255, 255) == "8/255"
    assert plots.eps_label(0.3) == "0.3"
    assert plots.eps_label(0.1 / 3) == "0.0333"


def test_image_png_enlarges_without_smoothing():
    x = torch.zeros(1, 2, 3)
    x[0, 0, 0] = 1.0
    img = Image.open(io.BytesIO(plots.image_png(x, scale=4)))
    assert img.size == (12, 8)
    a = np.asarray(img)
    assert a[:4, :4].min() == 255 and a[4:, :].max() == 0 and a[:4, 4:].max() == 0
    rgb = Image.open(io.BytesIO(plots.image_png(torch.rand(3, 5, 5), scale=2)))
    assert rgb.size == (10, 10) and rgb.mode == "RGB"


def test_magnify_maps_zero_to_grey_and_eps_to_the_ends():
    d = torch.tensor([-0.1, 0.0, 0.1])
    assert np.allclose(plots.magnify(d, eps=0.1), [0.0, 0.5, 1.0])
    assert np.allclose(plots.magnify(d), [0.0, 0.5, 1.0])
    assert np.allclose(plots.magnify(torch.zeros(3)), 0.5)


def test_attack_slider_figure_layout(mnist, model):
    x, y, _ = mnist
    eps_values = [0.1, 0.2]
    views = widgets.sweep(model, x[:1], y[:1], widgets.attack_menu("linf", pgd_steps=2),
                          "linf", eps_values)
    fig = plots.attack_slider_figure(eps_values, x[0], views[0], int(y[0]),
                                     data.DATASETS["mnist"].classes, title="t")
    assert len(fig.layout.sliders[0].steps) == 2
    assert len(fig.data) == 2 * 3 * 3  # eps x attacks x (image, perturbation, probabilities)
    images = [t for t in fig.data if t.type == "image"]
    assert images and all(t.source.startswith("data:image/png;base64,") for t in images)
    assert "true: 7" in fig.layout.title.text


def test_image_grid_row_titles_fit_their_rows():
    rows = {"1-step PGD, from test image": torch.rand(3, 3, 8, 8),
            "no PGD, from noise": torch.rand(3, 3, 8, 8)}
    fig = plots.image_grid(rows, column_titles=["a", "b", "c"], row_height=100)
    titles = [a for a in fig.layout.annotations if a.textangle == 90]
    assert [t.text.replace("<br>", " ") for t in titles] == list(rows)
    for t in titles:  # upright text: its longest line (about 0.6 em a character) within a row
        assert max(len(line) for line in t.text.split("<br>")) * 0.6 * t.font.size <= 100, t.text


def test_line_and_accuracy_figures():
    fig = plots.accuracy_vs_eps_figure([1 / 255, 8 / 255], {"m, FGSM": [50, 40], "m, PGD": [45, 30]},
                                       unit=255, eps_train=8 / 255)
    assert [t.name for t in fig.data] == ["m, FGSM", "m, PGD"]
    assert fig.data[0].line.dash == "dash" and fig.data[1].line.dash is None
    assert list(fig.layout.xaxis.ticktext) == ["1/255", "8/255"]
    with pytest.raises(ValueError, match="has 1 values"):
        plots.line_figure([1, 2], {"a": [1]}, xlabel="x", ylabel="y")


def test_history_figure_from_histories():
    history = [{"epoch": e, "clean_acc": 50 + e, "pgd_acc": 10 + e, "train_loss": 2 - e / 10,
                "note": "text"} for e in range(3)]
    fig = plots.history_figure(history)
    assert {t.name for t in fig.data} == {"clean_acc", "pgd_acc", "train_loss"}
    fig = plots.history_figure({"a": history, "b": history}, panels=[["pgd_acc"]])
    assert [t.name for t in fig.data] == ["a: pgd_acc", "b: pgd_acc"]
    assert list(fig.data[0].x) == [0, 1, 2]


def _fake_run(seed, pgd, history=None):
    from types import SimpleNamespace

    history = history or [{"epoch": e, "clean_acc": 30.0 + e, "fgsm_acc": 20.0 + e,
                           "pgd_acc": 15.0 + e, "time_attack": 60.0 * e, "time_update": 60.0 * e}
                          for e in range(3)]
    return SimpleNamespace(config=SimpleNamespace(seed=seed), history=history,
                           metrics={"clean_acc": 40.0, "fgsm_acc": 25.0, "pgd_acc": pgd, "n": 1000,
                                    "attack": "PGD-20-1 (alpha 0.007843)"})


def test_runs_curves_colour_a_run_and_show_it_once_in_the_legend():
    results = {"FGSM-RS": [_fake_run(0, 18.0), _fake_run(1, 17.0)], "PGD": _fake_run(0, 20.0)}
    fig = plots.runs_curves(results, {"pgd_acc": "PGD (%)", "fgsm_acc": "FGSM (%)"})
    names = ["FGSM-RS, seed 0"] * 2 + ["FGSM-RS, seed 1"] * 2 + ["PGD"] * 2
    assert [t.name for t in fig.data] == names
    assert [t.showlegend for t in fig.data] == [True, False] * 3
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    assert list(fig.data[0].y) == [15.0, 16.0, 17.0]
    minutes = plots.runs_curves({"a": _fake_run(0, 1.0)}, {"pgd_acc": "PGD"}, x="minutes")
    assert list(minutes.data[0].x) == [0.0, 2.0, 4.0]


def test_runs_table_diagnoses_catastrophic_overfitting():
    collapsed = [{"epoch": 0, "fgsm_acc": 30.0, "pgd_acc": 25.0},
                 {"epoch": 1, "fgsm_acc": 80.0, "pgd_acc": 2.0}]
    t = plots.runs_table({"FGSM": _fake_run(0, 2.0, collapsed), "FGSM-RS": [_fake_run(0, 17.0)]})
    assert [r[0] for r in t.rows] == ["FGSM", "FGSM-RS"]
    assert t.rows[0][-1].startswith("collapsed at epoch 1.0")
    assert t.rows[1][-1].startswith("no collapse") and t.rows[1][3] == "17.0%"
    assert "PGD-20-1" in t.rows[0][4] and t.rows[0][5] == "1,000"
    assert "catastrophic overfitting" not in plots.runs_table({"a": _fake_run(0, 1.0)},
                                                             diagnose=False).columns


def test_runs_slider_marks_the_selected_run():
    results = {1.0: _fake_run(0, 18.0), 2.0: _fake_run(0, 1.0)}
    fig = plots.runs_slider(results, label="alpha", value_labels=["8/255", "16/255"],
                            x_title="alpha / eps", active=1)
    assert [s.label for s in fig.layout.sliders[0].steps] == ["8/255", "16/255"]
    assert len(fig.data) == 3 + 2 * 4  # 3 static finals, 3 curves + 1 marker per run
    marker = [t for t in fig.data if t.name == "selected run"]
    assert [m.visible for m in marker] == [False, True] and list(marker[1].x) == [2.0] * 3


def test_norm_balls_figure(mnist):
    g = torch.tensor([[1.0, 0.5]]).view(1, 1, 1, 2)
    steps = {n: ThreatModel(n, 0.2).step(torch.zeros_like(g), g, 0.2).view(-1, 2)
             for n in ("linf", "l2")}
    fig = plots.norm_balls_figure(0.2, [30], g.view(-1, 2), steps["linf"], steps["l2"])
    linf = [t for t in fig.data if t.name.startswith("l-inf step")][0]
    assert (linf.x[0], linf.y[0]) == pytest.approx((0.2, 0.2))


# --------------------------------------------------------------------------- tables

def test_table_escapes_html_and_prints_as_text():
    t = plots.table([{"a": "<b>", "b": 1}, {"a": "x"}])
    html = t._repr_html_()
    assert "&lt;b&gt;" in html and "<td><b>" not in html
    assert t.columns == ["a", "b"] and t.rows[1] == ["x", ""]
    assert repr(t).splitlines()[0].split() == ["a", "b"]


def test_verdict_kind_reads_the_word_a_verdict_text_starts_with():
    assert plots.verdict_kind("Reproduced at reduced scale: 3 epochs") == "reproduced at reduced scale"
    assert plots.verdict_kind("differs: 3 epochs, not 10") == "differs"
    with pytest.raises(ValueError, match="must start with one of"):
        plots.verdict_kind("ok")


def test_comparison_table_rows_and_colours():
    rows = [dict(what="clean", paper="99.20%", ours="98.90%", settings="s",
                 verdict="reproduced at reduced scale: FGSM-RS survives"),
            dict(what="pgd", paper="88.77%", ours="-", settings="s",
                 verdict="not run here: add 0.3 to eval_eps")]
    table = plots.comparison_table(rows)
    assert table.columns == ["what", "paper", "ours", "settings", "verdict"]
    assert table.row_colours == [plots.VERDICT_COLOURS["reproduced at reduced scale"],
                                 plots.VERDICT_COLOURS["not run here"]]
    with pytest.raises(ValueError, match="lacks"):
        plots.comparison_table([dict(what="x", verdict="differs: y")])


# --------------------------------------------------------------------------- widgets

def test_attack_menu():
    assert list(widgets.attack_menu("linf", pgd_steps=7)) == ["FGSM", "FGSM-RS", "PGD-7"]
    assert list(widgets.attack_menu("l2")) == ["FGSM-l2", "l2fast", "PGD-10"]
    with pytest.raises(ValueError, match="norm must be"):
        widgets.attack_menu("l1")


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_sweep_views_respect_the_threat_model(mnist, model, norm, eps):
    x, y, _ = mnist
    torch.manual_seed(0)
    views = widgets.sweep(model, x[:3], y[:3], widgets.attack_menu(norm, pgd_steps=2), norm,
                          [eps / 2, eps])
    assert len(views) == 3
    for per_image, xi in zip(views, x[:3]):
        for name, steps in per_image.items():
            assert len(steps) == 2
            for (delta, probs), e in zip(steps, [eps / 2, eps]):
                assert delta.shape == xi.shape and probs.shape == (10,)
                assert float(ThreatModel(norm, e).norms(delta[None])[0]) <= e + 1e-5
                assert float((xi + delta).min()) >= 0 and float((xi + delta).max()) <= 1
                assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_predict_and_loss_along(mnist, model):
    x, y, _ = mnist
    probs, loss = widgets.predict(model, x, y)
    assert probs.shape == (8, 10) and loss.shape == (8,)
    assert widgets.predict(model, x)[1] is None
    direction = torch.sign(torch.randn_like(x))
    losses = widgets.loss_along(model, x, y, direction, [0.0, 0.1, 0.2])
    assert losses.shape == (3, 8)
    assert torch.allclose(losses[0], loss)


def test_attack_explorer_recomputes_on_change(mnist, model):
    x, y, _ = mnist
    box = widgets.attack_explorer(model, x, y, data.DATASETS["mnist"].classes, eps_max=0.3,
                                  eps=0.05)
    controls = box.children[0].children
    eps_slider, attack, index = controls
    adv = box.children[2].children[0].children[1]
    first, caption = adv.value, box.children[1].value
    eps_slider.value = 0.3
    assert adv.value != first and "eps = 0.3000" in box.children[1].value != caption
    attack.value = "PGD-10"
    index.value = 3
    assert f"true class: <b>{int(y[3])}</b>" in box.children[1].value


# --------------------------------------------------------------------------- parameters

PROFILES = {"smoke": dict(epochs=1, n=10), "quick": dict(epochs=3, n=100),
            "paper": dict(epochs=10, n=1000)}


def test_resolve_profile_overrides_beat_the_profile():
    p = book.resolve_profile(PROFILES, "quick", overrides={"epochs": 15, "n": None, "x": 1})
    assert (p.profile, p.epochs, p.n, p["n"]) == ("quick", 15, 100, 100)
    assert p.overridden == {"epochs": (15, 3)}
    assert "overridden (profile: 3)" in p._repr_html_()
    with pytest.raises(AttributeError, match="no parameter 'x'"):
        p.x


def test_resolve_profile_errors():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        book.resolve_profile(PROFILES, "fast")
    with pytest.raises(ValueError, match="same parameters"):
        book.resolve_profile({"smoke": dict(a=1), "quick": dict(b=1)}, "quick")


def test_parse_value():
    assert book.parse_value("15") == 15 and book.parse_value("0.3") == 0.3
    assert book.parse_value("[0.1, 0.3]") == [0.1, 0.3]
    assert book.parse_value("None") is None and book.parse_value("true") is True
    assert book.parse_value("paper") == "paper"


def test_run_card_states_profile_data_sizes_device(mnist):
    _, _, source = mnist
    p = book.resolve_profile(PROFILES, "smoke", overrides={"n": 5})
    card = book.run_card(p, data=[source], sizes={"test images": 5}, notes="<note>")
    text = repr(card)
    for needle in ("profile", "smoke", "n=5", "n=5 (profile: 10)", source, "size: test images",
                   "device", "cpu", "fatlib 0.1.0", "torch"):
        assert needle in text
    html = card._repr_html_()
    assert "Run card" in html and "&lt;note&gt;" in html
    json.dumps(card.rows)  # plain data
