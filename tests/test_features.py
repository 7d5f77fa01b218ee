import pytest
import torch

from diffuse_edu import config, data
from diffuse_edu.evaluation.features import (
    accuracy,
    extract,
    inception_available,
    inception_features,
    train_classifier,
)
from diffuse_edu.models.classifier import Classifier, ClassifierConfig
from diffuse_edu.training.pretrained import course_classifier


def test_classifier_learns_digits_and_gives_features():
    train, test = data.load_digits("train"), data.load_digits("test")
    torch.manual_seed(0)
    clf = train_classifier(train.images, train.labels, steps=150,
                           generator=torch.Generator().manual_seed(0))
    assert accuracy(clf, test.images, test.labels) > 0.85
    assert (extract(clf, test.images[:5]).shape == (5, 64)
            and extract(clf, test.images[:5]).dtype == torch.float64)


def test_course_classifier_is_reused_and_a_broken_or_stale_cache_is_replaced(tmp_path, capsys):
    quick = config.Scale.QUICK
    first = course_classifier(quick, steps=5, folder=tmp_path)
    assert "training one now" in capsys.readouterr().out
    path = next(tmp_path.glob("classifier_digits_1x16.pt"))
    again = course_classifier(quick, steps=5, folder=tmp_path)
    assert capsys.readouterr().out == ""  # read back, not retrained
    torch.testing.assert_close(again.head.weight, first.head.weight)
    course_classifier(quick, steps=6, folder=tmp_path)
    assert "out of date" in capsys.readouterr().out
    path.write_bytes(b"garbage")
    course_classifier(quick, steps=5, folder=tmp_path)
    assert "truncated or corrupted" in capsys.readouterr().out


def test_inception_missing_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert not inception_available()
    with pytest.raises(FileNotFoundError,
                       match="Inception-v3 weights are not on this machine.*IMAGENET1K_V1"):
        inception_features()


def test_classifier_shapes():
    clf = Classifier(ClassifierConfig(in_channels=3, widths=(8, 16), feature_dim=12))
    assert (clf(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
            and clf.features(torch.zeros(2, 3, 32, 32)).shape == (2, 12))
    assert config.cache_dir().name  # the cache folder is defined


def test_confidence_is_the_largest_probability_and_its_class():
    from diffuse_edu.evaluation.features import confidence

    torch.manual_seed(0)
    model = Classifier(ClassifierConfig()).eval()
    images = torch.rand(5, 1, 16, 16) * 2 - 1
    conf, classes = confidence(model, images, batch_size=2)
    with torch.no_grad():
        p = model(images).softmax(1)
    assert torch.allclose(conf, p.max(1).values) and torch.equal(classes, p.argmax(1))


def test_recognisable_marks_each_image_the_classifier_is_sure_of():
    from diffuse_edu.evaluation.features import RECOGNISABLE, confidence, recognisable

    torch.manual_seed(0)
    model = Classifier(ClassifierConfig()).eval()
    images = torch.rand(6, 1, 16, 16) * 2 - 1
    sure = recognisable(model, images, batch_size=4)
    assert sure.shape == (6,) and sure.dtype == torch.float32
    assert torch.equal(sure, (confidence(model, images)[0] >= RECOGNISABLE).float())
