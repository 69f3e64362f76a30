"""Distillation (README: "KL(teacher || student) on the logits (--distill-temperature); the teacher
is in eval mode, frozen"): the first loss a real run logs is that KL, computed here by hand from
the run's batch, teacher and student; after real updates the teacher is untouched."""
import pytest
import torch

from cli_runs import FROZEN_LR, FirstBatchSpy, as_argv, train_records
from vmae2_fast.data.pixels import normalize_on_device
from vmae2_fast import distill
from vmae2_fast.stages.classify import ClassifyStage
from vmae2_fast.models import build_classifier
from vmae2_fast.models.weights import read_checkpoint as load_checkpoint


def classifier(seed, spread):
    """vit_micro over 6 classes whose logits spread over several units (not the ~0 of the
    official head init), so that KL direction and temperature change the loss a lot."""
    torch.manual_seed(seed)
    model = build_classifier("vit_micro", 6, img_size=32, num_frames=4)
    with torch.no_grad():
        model.head.weight.normal_(0, spread)
        model.head.bias.normal_(0, spread)
    return model


@pytest.fixture(scope="module")
def checkpoints(tiny_synthetic, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    names = list(tiny_synthetic.class_names)
    torch.save({"model": classifier(1, 1.0).state_dict(), "config": {"class_names": names}},
               tmp / "teacher.pth")
    torch.save({"model": classifier(2, 0.5).state_dict()}, tmp / "student.pth")
    return tmp / "teacher.pth", tmp / "student.pth"


def distill_argv(ds, out, teacher, student, **extra):
    flags = dict(model="vit_micro", preset="cpu_demo", teacher=teacher, teacher_model="vit_micro",
                 init=student, train_list=ds.train_list, val_list=ds.val_list, data_root=ds.root,
                 output_dir=out, input_size=32, short_side_size=32, num_frames=4, batch_size=4,
                 epochs=1, warmup_epochs=0, num_workers=0, log_every=1, progress=False, validate=False)
    flags.update(extra)
    return as_argv(flags)


def kl(teacher_logits, student_logits, tau):
    """tau^2 * mean over clips of sum_k p_t (log p_t - log p_s), p = softmax(logits / tau)."""
    p_t = (teacher_logits / tau).softmax(-1)
    return tau ** 2 * (p_t * (p_t.log() - (student_logits / tau).log_softmax(-1))).sum(-1).mean()


def test_first_logged_loss_is_kl_teacher_to_student_at_the_temperature(tiny_synthetic, tmp_path,
                                                                        monkeypatch, checkpoints):
    teacher_path, student_path = checkpoints
    spy = FirstBatchSpy(monkeypatch, ClassifyStage)
    tau = 2.0
    assert distill.main(distill_argv(tiny_synthetic, tmp_path / "d", teacher_path, student_path,
                                     max_steps=1, distill_temperature=tau, **FROZEN_LR)) == 0
    logged = train_records(tmp_path / "d")[0]["loss"]
    video = normalize_on_device(spy.batch.video, erase=spy.batch.erasures)   # the stage's model input
    teacher = build_classifier("vit_micro", 6, img_size=32, num_frames=4).eval()
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True)["model"])
    student = build_classifier("vit_micro", 6, img_size=32, num_frames=4).eval()
    student.load_state_dict(load_checkpoint(tmp_path / "d" / "checkpoint-last.pth")["model"])
    with torch.no_grad():
        t, s = teacher(video), student(video)
    truth = kl(t, s, tau).item()
    assert logged == pytest.approx(truth, rel=1e-5)
    # the three ways to get it wrong each give another number on this batch
    for wrong in (kl(s, t, tau), kl(t, s, tau) / tau ** 2, kl(t, s, 1.0)):
        assert abs(wrong.item() - truth) > 0.02 * truth


def test_the_teacher_stays_frozen_while_the_student_learns(tiny_synthetic, tmp_path, monkeypatch,
                                                           checkpoints):
    teacher_path, student_path = checkpoints
    spy = FirstBatchSpy(monkeypatch, ClassifyStage)
    assert distill.main(distill_argv(tiny_synthetic, tmp_path / "d", teacher_path, student_path,
                                     max_steps=3)) == 0
    assert spy.calls == 3
    teacher = spy.stage.teacher
    assert not teacher.training and not any(q.requires_grad for q in teacher.parameters())
    assert all(q.grad is None for q in teacher.parameters())
    saved = torch.load(teacher_path, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in teacher.state_dict().items())
    before = torch.load(student_path, weights_only=True)["model"]
    after = load_checkpoint(tmp_path / "d" / "checkpoint-last.pth")["model"]
    assert not torch.equal(after["head.weight"], before["head.weight"])      # the student moved
