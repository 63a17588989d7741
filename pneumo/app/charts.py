"""Charts: plotly figures for the threshold explorer and the model card (pure functions)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from pneumo import config
from pneumo.evaluation import metrics as m

NORMAL_COLOUR = config.CLASS_COLOURS["NORMAL"]
PNEUMONIA_COLOUR = config.CLASS_COLOURS["PNEUMONIA"]
NEUTRAL_COLOUR = "#1f5f8b"
THRESHOLD_COLOUR = "#555555"
_FONT = {"size": 14}


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 370) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        xaxis_title=x, yaxis_title=y, height=height, font=_FONT,
        margin={"l": 60, "r": 20, "t": 50, "b": 95}, template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0.0},
    )
    return fig


def recall_vs_threshold(labels, probs, threshold: float, at: dict[str, float]) -> go.Figure:
    """NORMAL recall (specificity) and PNEUMONIA recall (sensitivity) across thresholds.

    ``at``: :func:`pneumo.evaluation.metrics.rates` at ``threshold`` (computed once by the page).
    """
    grid = np.linspace(0, 1, 201)
    c = m.recall_curves(labels, probs, grid)
    fig = go.Figure()
    fig.add_scatter(x=grid, y=c["sensitivity"], name="PNEUMONIA recall (sensitivity)",
                    line={"color": PNEUMONIA_COLOUR, "width": 3})
    fig.add_scatter(x=grid, y=c["specificity"], name="NORMAL recall (specificity)",
                    line={"color": NORMAL_COLOUR, "width": 3})
    fig.add_vline(x=threshold, line={"color": THRESHOLD_COLOUR, "dash": "dash"},
                  annotation_text=f"threshold {threshold:.3f}", annotation_position="top")
    fig.add_scatter(x=[threshold, threshold], y=[at["sensitivity"], at["specificity"]],
                    mode="markers", marker={"size": 11, "color": [PNEUMONIA_COLOUR, NORMAL_COLOUR],
                                            "line": {"width": 2, "color": "white"}},
                    showlegend=False, hoverinfo="skip")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_xaxes(range=[0, 1])
    return _layout(fig, "Per-class recall against the threshold", "Threshold on P(pneumonia)",
                   "Recall")


def recall_bars(at: dict[str, float], threshold: float) -> go.Figure:
    """Per-class recall at the current threshold (``at``: its rates) as two bars."""
    values = [at["specificity"], at["sensitivity"]]
    fig = go.Figure(go.Bar(
        x=["NORMAL recall<br>(specificity)", "PNEUMONIA recall<br>(sensitivity)"], y=values,
        marker_color=[NORMAL_COLOUR, PNEUMONIA_COLOUR], text=[f"{v:.1%}" for v in values],
        textposition="outside", cliponaxis=False))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return _layout(fig, f"Recall at threshold {threshold:.3f}", "", "Recall")


def confusion_matrix(counts: dict[str, int]) -> go.Figure:
    """2x2 heat map, rows = truth, columns = decision, with counts and row percentages."""
    z = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    row_totals = z.sum(axis=1, keepdims=True)
    pct = z / np.maximum(row_totals, 1)
    names = [["True negative", "False positive"], ["False negative (missed)", "True positive"]]
    text = [[f"<b>{int(z[i, j])}</b><br>{pct[i, j]:.1%} of row<br>{names[i][j]}" for j in range(2)]
            for i in range(2)]
    fig = go.Figure(go.Heatmap(
        z=pct, x=["Decision NORMAL", "Decision PNEUMONIA"], y=["Truth NORMAL", "Truth PNEUMONIA"],
        text=text, texttemplate="%{text}", textfont={"size": 15}, colorscale="Blues", zmin=0,
        zmax=1, showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Confusion matrix", "", "", height=340)


def roc(labels, probs, threshold: float, at: dict[str, float]) -> go.Figure:
    """ROC curve with the operating point at ``threshold`` (``at``: its rates)."""
    c = m.roc_curve(labels, probs)
    fig = go.Figure()
    fig.add_scatter(x=c["fpr"], y=c["tpr"], name=f"ROC (AUC {m.roc_auc(labels, probs):.3f})",
                    line={"color": NEUTRAL_COLOUR, "width": 3})
    fig.add_scatter(x=[0, 1], y=[0, 1], name="chance", line={"color": "#bbbbbb", "dash": "dot"})
    fig.add_scatter(x=[1 - at["specificity"]], y=[at["sensitivity"]], mode="markers",
                    name=f"operating point ({threshold:.3f})",
                    marker={"size": 13, "color": PNEUMONIA_COLOUR, "symbol": "x"})
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _layout(fig, "ROC curve", "False-positive rate (1 - specificity)",
                   "Sensitivity")


def precision_recall(labels, probs, threshold: float, at: dict[str, float]) -> go.Figure:
    """Precision-recall curve with the operating point at ``threshold`` (``at``: its rates)."""
    c = m.precision_recall_curve(labels, probs)
    prevalence = float(np.mean(labels))
    fig = go.Figure()
    fig.add_scatter(x=c["recall"], y=c["precision"], name="precision-recall",
                    line={"color": NEUTRAL_COLOUR, "width": 3})
    fig.add_hline(y=prevalence, line={"color": "#bbbbbb", "dash": "dot"},
                  annotation_text=f"prevalence {prevalence:.0%}", annotation_position="bottom left")
    fig.add_scatter(x=[at["sensitivity"]], y=[at["ppv"]], mode="markers",
                    name=f"operating point ({threshold:.3f})",
                    marker={"size": 13, "color": PNEUMONIA_COLOUR, "symbol": "x"})
    fig.update_xaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _layout(fig, "Precision-recall curve", "Recall (sensitivity)", "Precision (PPV)")


def probability_histogram(labels, probs, threshold: float) -> go.Figure:
    """Distribution of P(pneumonia) per true class, with the threshold."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    fig = go.Figure()
    for label, name, colour in ((0, "NORMAL", NORMAL_COLOUR), (1, "PNEUMONIA", PNEUMONIA_COLOUR)):
        fig.add_histogram(x=probs[labels == label], name=f"truly {name}", marker_color=colour,
                          opacity=0.65, xbins={"start": 0, "end": 1.0001, "size": 0.025})
    fig.add_vline(x=threshold, line={"color": THRESHOLD_COLOUR, "dash": "dash"},
                  annotation_text=f"threshold {threshold:.3f}", annotation_position="top")
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(range=[0, 1])
    return _layout(fig, "Probabilities by true class", "P(pneumonia)", "Images")


def subtype_recall(probs_by_subtype: dict[str, np.ndarray], threshold: float) -> go.Figure:
    """Sensitivity for bacterial and viral pneumonia at ``threshold``."""
    names, values, counts = [], [], []
    for subtype, p in probs_by_subtype.items():
        names.append(subtype.capitalize())
        values.append(float(np.mean(m.flagged(p, threshold))) if len(p) else float("nan"))
        counts.append(len(p))
    fig = go.Figure(go.Bar(
        x=names, y=values, marker_color=["#a93226", "#e67e22"][: len(names)],
        text=[f"{v:.1%} of {n}" for v, n in zip(values, counts)], textposition="outside",
        cliponaxis=False))
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return _layout(fig, f"Pneumonia recall by subtype at {threshold:.3f}", "", "Recall")


def reliability_diagram(labels, probs, bins: int = 10, split: str = "") -> go.Figure:
    """Observed pneumonia frequency against mean predicted probability per bin."""
    r = m.reliability(labels, probs, bins)
    keep = r["count"] > 0
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], name="perfect calibration",
                    line={"color": "#bbbbbb", "dash": "dot"})
    fig.add_scatter(x=r["mean_predicted"][keep], y=r["observed"][keep], mode="lines+markers",
                    name="pneumo", line={"color": NEUTRAL_COLOUR, "width": 3},
                    marker={"size": 6 + 14 * r["count"][keep] / r["count"].max()},
                    text=[f"{int(c)} images" for c in r["count"][keep]],
                    hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{text}")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    ece = m.expected_calibration_error(labels, probs, bins)
    title = f"Reliability, {split} (ECE {ece:.3f})" if split else f"Reliability diagram (ECE {ece:.3f})"
    return _layout(fig, title, "Mean predicted P(pneumonia)",
                   "Observed pneumonia frequency")


def training_curves(history: dict[str, list], metric: str) -> go.Figure:
    """Train and validation ``metric`` ('loss' or 'auc') per epoch, head and fine-tuning phases."""
    fig = go.Figure()
    step = list(range(1, len(history["epoch"]) + 1))
    label = [f"{ph} {ep}" for ph, ep in zip(history["phase"], history["epoch"])]
    for key, name, colour in ((metric, "train", NEUTRAL_COLOUR),
                              (f"val_{metric}", "validation", PNEUMONIA_COLOUR)):
        if key not in history:
            continue
        fig.add_scatter(x=step, y=history[key], name=name, mode="lines+markers", text=label,
                        line={"color": colour, "width": 2},
                        hovertemplate="%{text}: %{y:.4f}")
    n_head = sum(1 for ph in history["phase"] if ph == "head")
    if 0 < n_head < len(step):
        fig.add_vline(x=n_head + 0.5, line={"color": THRESHOLD_COLOUR, "dash": "dash"},
                      annotation_text="fine-tuning starts", annotation_position="top")
    title = {"auc": "AUC", "loss": "Loss (binary cross-entropy)",
             "outside": "Share of the heat map outside the lungs"}.get(metric, metric)
    return _layout(fig, title, "Epoch (head-only, then fine-tuning)", title)


def class_balance(splits: dict[str, dict[str, int]]) -> go.Figure:
    """Grouped bars: images per class in each split."""
    fig = go.Figure()
    for name, colour in (("NORMAL", NORMAL_COLOUR), ("PNEUMONIA", PNEUMONIA_COLOUR)):
        values = [splits[s].get(name, 0) for s in splits]
        fig.add_bar(x=list(splits), y=values, name=name, marker_color=colour, text=values,
                    textposition="outside", cliponaxis=False)
    fig.update_layout(barmode="group")
    return _layout(fig, "Images per class and split", "Split", "Images")


def predictive_values(sensitivity: float, specificity: float,
                      prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) at ``prevalence`` (0..1) from a threshold's sensitivity and specificity, by
    Bayes' rule; NaN where a value is undefined (nothing flagged, or nothing cleared)."""
    tp, fn = sensitivity * prevalence, (1 - sensitivity) * prevalence
    tn, fp = specificity * (1 - prevalence), (1 - specificity) * (1 - prevalence)
    ppv = tp / (tp + fp) if tp + fp > 0 else float("nan")
    npv = tn / (tn + fn) if tn + fn > 0 else float("nan")
    return ppv, npv
