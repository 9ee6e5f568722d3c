"""One module per stage of the compression pipeline; each is plain PyTorch and yields metrics per epoch."""

from tuner.stages import factorized, student, teacher

TRAIN = {"teacher": teacher.train, "factorized": factorized.train, "student": student.train}
