import numpy as np
import pytest
import torch

from bayesnas.data import SplitData, Task, TaskSampler, load_default
from bayesnas.errors import ConfigError, DataError

SIDE = 6


def labelled_split(counts):
    """Each image carries (class, image) in its top-left pixels; the rest is noise.

    The two pixels sit in one corner, so a rotated copy is recognisable after undoing it.
    """
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (sum(counts), 1, SIDE, SIDE), dtype=np.uint8))
    row = 0
    for c, count in enumerate(counts):
        for i in range(count):
            images[row, 0, 0, 0], images[row, 0, 0, 1] = c, i
            row += 1
    names = [f"alpha/character{c:02d}" for c in range(len(counts))]
    return SplitData(images, counts, names, ["alpha"] * len(counts), name="train", path="data/toy.h5")


def identify(x, turns=None):
    """(class, image) of float images [n, 1, H, W] drawn from ``labelled_split``."""
    pixels = (x * 255).round().to(torch.uint8)
    if turns is not None:
        pixels = torch.stack([torch.rot90(p, -int(k), dims=(-2, -1)) for p, k in zip(pixels, turns, strict=True)])
    return [(int(p[0, 0, 0]), int(p[0, 0, 1])) for p in pixels]


def check_task(task, split, ways, shots, queries, rotations=False):
    n = split.num_classes
    assert task.support_x.shape == (ways * shots, 1, SIDE, SIDE)
    assert task.query_x.shape == (ways * queries, 1, SIDE, SIDE)
    assert task.support_x.dtype == torch.float32 and task.support_y.dtype == torch.int64
    assert 0 <= task.support_x.min() and task.support_x.max() <= 1
    assert task.support_y.tolist() == [j for j in range(ways) for _ in range(shots)]
    assert task.query_y.tolist() == [j for j in range(ways) for _ in range(queries)]
    assert len(set(task.classes.tolist())) == ways
    assert 0 <= task.classes.min() and task.classes.max() < (4 * n if rotations else n)
    drawn = []
    for x, y in ((task.support_x, task.support_y), (task.query_x, task.query_y)):
        classes = task.classes[y]
        found = identify(x, classes // n if rotations else None)
        assert [c for c, _ in found] == (classes % n).tolist()        # every image from its label's class
        # A rotated copy is another class, so an image is (class id with rotation, image).
        drawn.append({(int(c), i) for c, (_, i) in zip(classes, found, strict=True)})
    support, query = drawn
    assert len(support) == ways * shots and len(query) == ways * queries       # no repeats
    assert not support & query                                               # disjoint


def test_tasks_have_the_right_shapes_labels_and_disjoint_sets():
    split = labelled_split([8, 9, 8, 10, 8, 12, 8])
    sampler = TaskSampler(split, ways=5, shots=3, queries=5, seed=4)
    for index in range(40):
        check_task(sampler.task(index), split, 5, 3, 5)


def test_same_seed_and_index_give_the_same_task_in_any_order():
    split = labelled_split([6] * 10)
    a = TaskSampler(split, ways=3, shots=2, queries=2, seed=7)
    b = TaskSampler(split, ways=3, shots=2, queries=2, seed=7)
    later = b.task(5)
    b.task(0)
    for x, y in zip(a.task(5), later, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.task(5).query_x, a.task(6).query_x)
    c = TaskSampler(split, ways=3, shots=2, queries=2, seed=8)
    assert not torch.equal(a.task(5).query_x, c.task(5).query_x)


def test_batch_stacks_the_tasks_of_its_indices():
    split = labelled_split([6] * 10)
    sampler = TaskSampler(split, ways=4, shots=1, queries=3, seed=1)
    batch = sampler.batch([3, 11, 4])
    assert isinstance(batch, Task)
    assert batch.support_x.shape == (3, 4, 1, SIDE, SIDE) and batch.query_y.shape == (3, 12)
    for row, index in enumerate([3, 11, 4]):
        for x, y in zip(batch, sampler.task(index), strict=True):
            assert torch.equal(x[row], y)


def test_rank_strided_indices_reproduce_a_single_run():
    split = labelled_split([6] * 10)
    single = TaskSampler(split, ways=3, shots=1, queries=1).batch(range(6))
    ranks = [TaskSampler(split, ways=3, shots=1, queries=1).batch(range(r, 6, 2)) for r in range(2)]
    assert torch.equal(single.classes[0::2], ranks[0].classes)
    assert torch.equal(single.query_x[1::2], ranks[1].query_x)


def test_classes_and_label_assignment_are_uniformly_shuffled():
    split = labelled_split([4] * 6)
    sampler = TaskSampler(split, ways=2, shots=1, queries=1)
    classes = sampler.batch(range(3000)).classes
    frequency = torch.bincount(classes.flatten(), minlength=6).float() / classes.numel()
    assert torch.allclose(frequency, torch.full((6,), 1 / 6), atol=0.02)
    assert 0.45 < (classes[:, 0] < classes[:, 1]).float().mean() < 0.55        # label 0 not the smaller id


def test_image_choice_covers_each_class_uniformly():
    split = labelled_split([10, 10])
    sampler = TaskSampler(split, ways=2, shots=1, queries=2)
    batch = sampler.batch(range(2000))
    picks = torch.tensor([i for c, i in identify(batch.support_x.flatten(0, 1))])
    frequency = torch.bincount(picks, minlength=10).float() / len(picks)
    assert torch.allclose(frequency, torch.full((10,), 0.1), atol=0.02)


def test_rotations_make_four_classes_per_class():
    split = labelled_split([5] * 3)
    sampler = TaskSampler(split, ways=5, shots=2, queries=3, rotations=True)
    assert sampler.num_classes == 12
    seen = set()
    for index in range(60):
        task = sampler.task(index)
        check_task(task, split, 5, 2, 3, rotations=True)
        seen.update(task.classes.tolist())
        rotated = task.classes >= 3
        if rotated.any():
            j = int(rotated.nonzero()[0])
            turns = int(task.classes[j] // 3)
            original = split.class_images(int(task.classes[j] % 3)).float() / 255
            image = task.support_x[j * 2]
            assert any(torch.equal(image, torch.rot90(o, turns, dims=(-2, -1))) for o in original)
    assert seen == set(range(12))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(ways=1, shots=1, queries=1), ConfigError, "ways must be an integer >= 2, got 1"),
    (dict(ways=2, shots=0, queries=1), ConfigError, "shots must be an integer >= 1, got 0"),
    (dict(ways=2, shots=1, queries=0), ConfigError, "queries must be an integer >= 1, got 0"),
    (dict(ways=2.5, shots=1, queries=1), ConfigError, "ways must be an integer"),
    (dict(ways=5, shots=1, queries=1), DataError,
     "data/toy.h5: split 'train' has 3 classes, 5-way needs at least 5"),
    (dict(ways=13, shots=1, queries=1, rotations=True), DataError,
     "data/toy.h5: split 'train' has 3 classes (12 with rotations), 13-way needs at least 13"),
    (dict(ways=2, shots=5, queries=15), DataError,
     "data/toy.h5: split 'train': class 'alpha/character01' has 12 images, 5-shot 15-query needs 20"),
    (dict(ways=2, shots=1, queries=1, seed=-1), ConfigError, "seed must be a non-negative integer"),
    (dict(ways=2, shots=1, queries=1, device="tpu"), ConfigError, "expected 'auto', 'cpu'"),
])
def test_impossible_settings_fail_before_sampling(kwargs, error, message):
    split = labelled_split([20, 12, 20])
    with pytest.raises(error) as err:
        TaskSampler(split, **kwargs)
    assert message in str(err.value)


def test_bad_task_indices():
    sampler = TaskSampler(labelled_split([4] * 3), ways=2, shots=1, queries=1)
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ConfigError, match="task indices must be non-negative integers"):
            sampler.task(bad)
    assert torch.equal(sampler.task(torch.tensor(3)).query_x, sampler.task(np.int64(3)).query_x)
    with pytest.raises(ConfigError, match="at least one task index"):
        sampler.batch([])


def test_rotations_need_square_images():
    split = SplitData(torch.zeros(4, 1, 3, 5, dtype=torch.uint8), [2, 2], ["a", "b"], ["", ""])
    with pytest.raises(ConfigError, match="rotations need square images, these are 3x5"):
        TaskSampler(split, ways=2, shots=1, queries=1, rotations=True)


def test_embedded_omniglot_tasks():
    train = load_default().split("train")
    sampler = TaskSampler(train, ways=5, shots=5, queries=15, rotations=True)
    task = sampler.batch([0, 1])
    assert task.support_x.shape == (2, 25, 1, 28, 28) and task.query_x.shape == (2, 75, 1, 28, 28)
    assert task.support_x.max() == 1.0 and task.support_x.min() == 0.0
    with pytest.raises(DataError, match=r"omniglot_minimal.h5: split 'train': class '.*' has 20 images, "
                                        r"5-shot 16-query needs 21"):
        TaskSampler(train, ways=5, shots=5, queries=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tasks_match_cpu_tasks():
    split = labelled_split([6] * 10)
    cpu = TaskSampler(split, ways=3, shots=2, queries=2, rotations=True).batch(range(4))
    gpu = TaskSampler(split, ways=3, shots=2, queries=2, rotations=True, device="cuda").batch(range(4))
    assert gpu.support_x.is_cuda and gpu.classes.is_cuda
    for x, y in zip(cpu, gpu, strict=True):
        assert torch.equal(x, y.cpu())


def test_image_size_resizes_once_by_area_averaging():
    train = load_default().split("train")
    full = TaskSampler(train, ways=5, shots=1, queries=2, seed=3, rotations=True)
    small = TaskSampler(train, ways=5, shots=1, queries=2, seed=3, rotations=True, image_size=14)
    assert small.image_size == (14, 14) and full.image_size == (28, 28)
    a, b = full.batch([0, 1]), small.batch([0, 1])
    assert b.support_x.shape == (2, 5, 1, 14, 14)
    assert torch.equal(a.support_y, b.support_y) and torch.equal(a.classes, b.classes)
    # the same images (rotations included), each 2x2 block averaged and rounded to 8 bits
    expected = torch.nn.functional.avg_pool2d(a.query_x.flatten(0, 1) * 255, 2).round().view_as(b.query_x) / 255
    assert torch.allclose(b.query_x, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="image_size 56 is larger than the stored 28x28"):
        TaskSampler(train, ways=5, shots=1, queries=2, image_size=56)
