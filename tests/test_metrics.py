"""Metrics against scikit-learn (and plain-Python top-k), random and edge-case inputs."""
import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, top_k_accuracy_score

from mmit_fast.metrics import (
    MetricAccumulator, evaluate, format_table_row, per_class_ap_csv, result_to_json, results_table_json,
    results_table_markdown,
)

TOL = 1e-9


def _data(n=120, c=23, p=0.12, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 4, (n, c)).astype(np.float64) if ties else rng.normal(size=(n, c))
    y = (rng.random((n, c)) < p).astype(np.int64)
    return s, y


def _sk_ap(y, s):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return average_precision_score(y, s)


def _topk_python(s, y, k):
    """Independent top-k: rank classes by (score desc, class index desc) — top_k_accuracy_score's rule."""
    hits = []
    for row_s, row_y in zip(s, y):
        if not row_y.any():
            continue
        order = sorted(range(len(row_s)), key=lambda j: (-row_s[j], -j))[:k]
        hits.append(any(row_y[j] for j in order))
    return float(np.mean(hits))


def _oracle(s, y):
    rows = y.any(1)
    per_class = np.array([_sk_ap(y[:, j], s[:, j]) if y[:, j].any() else np.nan for j in range(y.shape[1])])
    return dict(
        micro_map=label_ranking_average_precision_score(y[rows], s[rows]),
        micro_map_ap=np.mean([_sk_ap(y[i], s[i]) for i in np.flatnonzero(rows)]),
        macro_map=np.nanmean(per_class),
        per_class_ap=per_class,
        pooled_ap=average_precision_score(y, s, average="micro"),
        top1=_topk_python(s, y, 1),
        top5=_topk_python(s, y, 5),
    )


def _check(res, s, y):
    o = _oracle(s, y)
    assert abs(res["micro_map"] - o["micro_map"]) < TOL
    assert abs(res["micro_map"] - o["micro_map_ap"]) < TOL
    assert abs(res["macro_map"] - o["macro_map"]) < TOL
    assert abs(res["pooled_ap"] - o["pooled_ap"]) < TOL
    np.testing.assert_allclose(res["per_class_ap"], o["per_class_ap"], rtol=0, atol=TOL)
    assert np.array_equal(np.isnan(res["per_class_ap"]), np.isnan(o["per_class_ap"]))
    assert res["top1"] == o["top1"] and res["top5"] == o["top5"]
    for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
        assert 0.0 <= res[k] <= 1.0


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_random(seed, ties):
    s, y = _data(seed=seed, ties=ties)
    y[y.sum(1) == 0, seed] = 1  # every row has a positive here; the no-positive case is tested below
    res = evaluate(s, y)
    _check(res, s, y)
    assert res["num_videos"] == len(s) and res["num_videos_without_positive"] == 0
    assert res["num_classes_evaluated"] == int((y.sum(0) > 0).sum())


def test_heavy_ties_and_constant_scores():
    s, y = _data(n=60, c=9, p=0.3, seed=5)
    s = np.round(s)  # few distinct values
    y[y.sum(1) == 0, 0] = 1
    _check(evaluate(s, y), s, y)
    const = np.zeros_like(s)  # everything tied: AP = prevalence
    res = evaluate(const, y)
    _check(res, const, y)
    assert abs(res["pooled_ap"] - y.mean()) < TOL


def test_class_without_positives_and_row_without_positives():
    s, y = _data(n=50, c=11, p=0.2, seed=3)
    y[:, 4] = 0  # a class with no positive
    y[7] = 0  # a video with no positive
    y[[8, 9]] = 0
    res = evaluate(s, y)
    assert math.isnan(res["per_class_ap"][4])
    assert res["num_classes_evaluated"] == int((y.sum(0) > 0).sum())
    assert res["num_videos"] == 50 and res["num_videos_without_positive"] == int((y.sum(1) == 0).sum())
    _check(res, s, y)  # oracle: top-k and micro over rows with a positive; macro over classes with one


def test_single_video_and_single_class():
    s = np.array([[0.1, 0.9, 0.3, 0.3, 0.2, 0.0, 0.5]])
    y = np.array([[0, 0, 1, 1, 0, 0, 0]])
    res = evaluate(s, y)
    _check(res, s, y)
    assert res["top1"] == 0.0 and res["top5"] == 1.0
    # ties at 0.3: both positives share rank 3 -> precision 2/4 for each
    assert abs(res["micro_map"] - 0.5) < TOL
    one = evaluate(np.array([[0.2], [0.7], [0.1]]), np.array([[0], [1], [1]]))
    assert abs(one["macro_map"] - _sk_ap([0, 1, 1], [0.2, 0.7, 0.1])) < TOL


def test_top_k_tie_rule_matches_sklearn_top_k_accuracy():
    rng = np.random.default_rng(4)
    n, c = 300, 12
    s = rng.integers(0, 3, (n, c)).astype(float)  # many ties
    labels = rng.integers(0, c, n)
    y = np.eye(c, dtype=int)[labels]
    res = evaluate(s, y)
    assert res["top1"] == top_k_accuracy_score(labels, s, k=1, labels=np.arange(c))
    assert res["top5"] == top_k_accuracy_score(labels, s, k=5, labels=np.arange(c))


def test_fewer_classes_than_k():
    s, y = _data(n=20, c=3, p=0.4, seed=9)
    y[y.sum(1) == 0, 1] = 1
    res = evaluate(s, y)
    assert res["top5"] == 1.0
    _check(res, s, y)


def test_torch_and_numpy_inputs_agree():
    s, y = _data(seed=6)
    y[y.sum(1) == 0, 0] = 1
    a = evaluate(s.astype(np.float32), y)
    b = evaluate(torch.from_numpy(s.astype(np.float32)), torch.from_numpy(y).float())
    for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap"):
        assert a[k] == b[k]
    c = evaluate(torch.from_numpy(s).half(), torch.from_numpy(y).bool())  # half scores accepted
    assert 0 <= c["micro_map"] <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_equals_one_shot(dtype):
    s, y = _data(n=257, c=31, seed=7, ties=(dtype == np.float32))
    s = s.astype(dtype)
    y[5] = 0
    acc = MetricAccumulator(31)
    for a, b in [(0, 1), (1, 64), (64, 200), (200, 257)]:
        acc.update(torch.from_numpy(s[a:b]), torch.from_numpy(y[a:b]))
    streamed, one = acc.compute(), evaluate(s, y)
    for k in ("top1", "top5", "micro_map", "macro_map", "pooled_ap", "num_videos", "num_classes_evaluated"):
        assert streamed[k] == one[k], k
    np.testing.assert_array_equal(streamed["per_class_ap"], one["per_class_ap"])
    sub = [1, 4, 9, 30]
    assert acc.compute(class_subset=sub)["macro_map"] == evaluate(s, y, class_subset=sub)["macro_map"]
    # merging accumulators (e.g. from several ranks) is the same as one stream
    a1, a2 = MetricAccumulator(31), MetricAccumulator(31)
    a1.update(s[:100], y[:100])
    a2.update(s[100:], y[100:])
    assert a1.merge(a2).compute()["pooled_ap"] == one["pooled_ap"]
    with pytest.raises(ValueError, match="no batch"):
        MetricAccumulator(3).compute()


def test_class_subset_mode():
    s, y = _data(n=200, c=15, p=0.15, seed=11)
    sub = np.array([2, 3, 5, 7, 11, 13])
    res = evaluate(s, y, class_subset=sub)
    keep = y[:, sub].any(1)
    ss, yy = s[keep][:, sub], y[keep][:, sub]
    _check(res, ss, yy)
    assert res["num_videos"] == keep.sum() and res["num_videos_without_positive"] == 0
    assert list(res["class_indices"]) == list(sub) and len(res["per_class_ap"]) == len(sub)
    mask = np.zeros(15, bool)
    mask[sub] = True
    assert evaluate(s, y, class_subset=mask)["micro_map"] == res["micro_map"]


def test_single_label_mode():
    s, y = _data(n=300, c=10, p=0.15, seed=12)
    res = evaluate(s, y, single_label=True)
    keep = y.sum(1) == 1
    _check(res, s[keep], y[keep])
    assert res["num_videos"] == keep.sum()
    labels = y[keep].argmax(1)
    assert res["top1"] == top_k_accuracy_score(labels, s[keep], k=1, labels=np.arange(10))
    assert res["top5"] == top_k_accuracy_score(labels, s[keep], k=5, labels=np.arange(10))
    # subset + single label: one positive among the subset columns
    sub = [0, 1, 2, 3]
    res2 = evaluate(s, y, class_subset=sub, single_label=True)
    keep2 = y[:, sub].sum(1) == 1
    _check(res2, s[keep2][:, sub], y[keep2][:, sub])


def test_bad_input_raises():
    s, y = _data(n=10, c=5)
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate(s, y[:, :4])
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate(s[:9], y)
    y2 = y.copy()
    y2[3, 2] = 2
    with pytest.raises(ValueError, match=r"binary.*row 3, class 2"):
        evaluate(s, y2)
    with pytest.raises(ValueError, match="binary"):
        evaluate(s, y * 0.5)
    with pytest.raises(ValueError, match="2-D"):
        evaluate(s[0], y[0])
    s2 = s.copy()
    s2[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(s2, y)
    with pytest.raises(ValueError, match="outside"):
        evaluate(s, y, class_subset=[0, 5])
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(s, y, class_subset=[1, 1])
    with pytest.raises(ValueError, match="classes"):
        MetricAccumulator(4).update(s, y)


def test_reports(tmp_path):
    s, y = _data(n=40, c=4, seed=2)
    y[:, 3] = 0
    y[y.sum(1) == 0, 0] = 1
    res = evaluate(s, y)
    classes = ["run", "jump", "swim", "fly"]
    path = tmp_path / "ap.csv"
    per_class_ap_csv(res, classes, path)
    rows = list(csv.DictReader(open(path)))
    assert [r["class"] for r in rows] == classes
    assert abs(float(rows[1]["ap"]) - _sk_ap(y[:, 1], s[:, 1])) < TOL
    assert rows[3]["ap"] == "" and rows[3]["num_positives"] == "0"
    row = format_table_row("I3D", "wLSEP", res)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["I3D", "wLSEP"]
    assert cells[2] == f"{100 * res['top1']:.1f}" and cells[5] == f"{100 * res['macro_map']:.1f}"
    table = results_table_markdown([("I3D", "BCE", res)])
    assert table.splitlines()[0].startswith("| model | loss | top-1")
    assert table.splitlines()[2] == format_table_row("I3D", "BCE", res)
    js = json.loads(json.dumps(results_table_json([("I3D", "BCE", res)])))
    assert js[0]["micro_map"] == res["micro_map"]
    assert results_table_markdown(js).splitlines()[2] == format_table_row("I3D", "BCE", res)
    full = json.loads(json.dumps(result_to_json(res)))
    assert full["per_class_ap"][3] is None
