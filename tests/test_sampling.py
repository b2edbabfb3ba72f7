"""Task mixing and long-text weighting: the Ray Data map and the local session draw rows by the same rule."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl.config import ConfigError
from mtl.data.contract import split_files
from mtl.data.ray_datasets import clean_rows, validate_files
from mtl.data.sampling import draw_counts, draw_rates, task_weights
from mtl.train.local_session import LocalSession
from tests.conftest import write_parquet


def mixed_rows(sentiment: int, topic: int, seed: int = 0) -> dict[str, list]:
    """Sentiment rows of 2 or 8 words (a quarter long), topic questions of 4 words."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"text": [], "task": [], "label": []}
    for index in range(sentiment):
        long = index % 4 == 0
        rows["text"].append(" ".join(["good"] * (8 if long else 2)) + f" {index}")
        rows["task"].append("sentiment")
        rows["label"].append(int(rng.integers(2)))
    for index in range(topic):
        rows["text"].append(f"who is it {index}")
        rows["task"].append("topic")
        rows["label"].append(int(rng.integers(6)))
    return rows


def test_task_weights_for_each_strategy():
    counts = {"a": 900, "b": 100}
    assert task_weights(counts, "proportional") == pytest.approx({"a": 0.9, "b": 0.1})
    assert task_weights(counts, "temperature", 2.0) == pytest.approx({"a": 30 / 40, "b": 10 / 40})
    assert task_weights(counts, "uniform") == pytest.approx({"a": 0.5, "b": 0.5})


def test_draw_counts_are_unbiased_and_keep_every_row_expected_at_least_once():
    rng = np.random.default_rng(0)
    expected = np.array([0.25, 1.0, 1.5, 3.0] * 5_000)
    drawn = np.stack([draw_counts(expected, rng) for _ in range(20)])
    assert drawn[:, expected >= 1].min() >= 1
    np.testing.assert_allclose(drawn.mean(axis=0).reshape(-1, 4).mean(axis=0), [0.25, 1.0, 1.5, 3.0], rtol=0.02)


@pytest.mark.parametrize("sampling", ["proportional", "temperature", "uniform"])
def test_ray_data_map_and_local_session_draw_the_configured_shares(make_config, tmp_path, sampling):
    path = write_parquet(tmp_path / "mixed.parquet", mixed_rows(1_600, 400))
    data = {"train": [str(path)], "sampling": sampling, "long_text_words": 6, "long_text_factor": 3.0}
    config = make_config(data=data)
    _, _, counts, weight_sums = validate_files(split_files(config, "train"), config, "data.train")
    assert counts == {"sentiment": 1_600, "topic": 400} and weight_sums == {"sentiment": 2_400.0, "topic": 400.0}
    rates, epoch_rows = draw_rates(counts, weight_sums, config.data)
    topic_share = task_weights(counts, sampling, config.data.temperature)["topic"]
    long_share = 3 * 400 / (3 * 400 + 1_200)  # of the sentiment rows: long rows weigh 3, short ones 1

    def shares(texts, task_ids) -> tuple[float, float]:
        sentiment = task_ids == 0
        words = np.array([len(text.split()) for text in texts])
        return float((task_ids == 1).mean()), float((words[sentiment] >= 6).mean())

    raw = pq.read_table(path)
    config_json = config.model_dump_json()
    task_rates = [rates[name] for name in config.task_names]
    ray_path = [clean_rows(raw.slice(start, 250), config_json, task_rates) for start in range(0, 2_000, 250)]
    ray_rows = pa.concat_tables(ray_path)
    session = LocalSession(config)
    assert session.epoch_rows == epoch_rows
    batches = (batch for batch in session.train_batches() if batch is not None)  # None: an epoch's end
    local = [batch for _, batch in zip(range(4 * epoch_rows // 16), batches, strict=False)]
    local_texts = np.concatenate([batch["text"] for batch in local])
    local_tasks = np.concatenate([batch["task_id"] for batch in local])
    for texts, task_ids in [
        (ray_rows.column("text").to_pylist(), ray_rows.column("task_id").to_numpy()),
        (local_texts, local_tasks),
    ]:
        topic, long = shares(texts, task_ids)
        assert topic == pytest.approx(topic_share, abs=0.03)
        assert long == pytest.approx(long_share, abs=0.03)
    assert ray_rows.num_rows == pytest.approx(epoch_rows, rel=0.05)


def test_local_session_draws_afresh_every_epoch(make_config, tmp_path):
    path = write_parquet(tmp_path / "mixed.parquet", mixed_rows(1_600, 400))
    config = make_config(data={"train": [str(path)], "sampling": "temperature"})
    session = LocalSession(config)
    batches = (batch for batch in session.train_batches() if batch is not None)  # None: an epoch's end
    per_epoch = session.epoch_rows // 16
    first = {text for _, batch in zip(range(per_epoch), batches, strict=False) for text in batch["text"]}
    second = {text for _, batch in zip(range(per_epoch), batches, strict=False) for text in batch["text"]}
    assert first != second  # the sentiment rows left out differ between epochs


def test_long_text_factor_needs_a_length(make_config):
    with pytest.raises(ConfigError, match="data.long_text_factor needs data.long_text_words"):
        make_config(data={"long_text_factor": 2.0})


def test_ray_data_map_draws_afresh_every_epoch(make_config, tmp_path):
    path = write_parquet(tmp_path / "mixed.parquet", mixed_rows(1_600, 400))
    config = make_config(data={"train": [str(path)], "sampling": "temperature"})
    _, _, counts, weight_sums = validate_files(split_files(config, "train"), config, "data.train")
    rates, _ = draw_rates(counts, weight_sums, config.data)
    raw, config_json = pq.read_table(path), config.model_dump_json()
    epochs = [clean_rows(raw, config_json, [rates[name] for name in config.task_names]) for _ in range(2)]
    first, second = (set(epoch.column("text").to_pylist()) for epoch in epochs)
    assert first != second  # sentiment rows are drawn at a rate < 1: a different subset each epoch


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ray_path_has_no_long_single_task_stretches_even_from_single_task_files(make_config, tmp_path):
    """Issue 13.4: the worker's batch stream (Ray Data read + the session's local shuffle buffer) from data.train given
    as separate single-task files, 4 of sentiment then 1 of topic: measured longest run of consecutive single-task
    micro batches and of same-task rows, against what independent draws at these shares give."""
    import ray

    from mtl.data.ray_datasets import training_dataset
    from mtl.train.ray_session import SHUFFLE_BUFFER_ROWS

    rows = mixed_rows(4_000, 1_000)
    for part in range(4):
        write_parquet(tmp_path / "train" / f"a-sentiment-{part}.parquet",
                      {key: value[part * 1_000 : (part + 1) * 1_000] for key, value in rows.items()})  # fmt: skip
    write_parquet(tmp_path / "train" / "b-topic.parquet", {key: value[4_000:] for key, value in rows.items()})
    config = make_config(data={"train": [str(tmp_path / "train" / "*.parquet")], "validation": []})
    files, _, counts, weight_sums = validate_files(split_files(config, "train"), config, "data.train")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        dataset, _, _ = training_dataset(files, config, counts, weight_sums, str(tmp_path / "stream_resume.npy"))
        batches = dataset.iter_batches(batch_size=32, batch_format="numpy", drop_last=True,
                                       local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=0)  # fmt: skip
        task_ids = [batch["task_id"] for batch in batches]
    finally:
        ray.shutdown()
    single, longest_batches = 0, 0
    for ids in task_ids:
        single = single + 1 if len(set(ids.tolist())) == 1 else 0
        longest_batches = max(longest_batches, single)
    stream = np.concatenate(task_ids)
    changes = np.flatnonzero(np.diff(stream)) + 1
    longest_rows = int(np.diff(np.concatenate([[0], changes, [len(stream)]])).max())
    # Independent draws at 80 % sentiment: an all-sentiment batch of 32 has p = 0.8**32 (~0.08 %); the longest
    # sentiment run among ~5,000 rows is ~log(5000)/log(1/0.8) ~ 38 rows. File order must not stretch either.
    print(f"single-task files: longest single-task batch run {longest_batches}, same-task row run {longest_rows}")
    assert longest_batches <= 2, longest_batches
    assert longest_rows <= 100, longest_rows
