"""The standard Hugging Face peers of tuner's measurements, one sub-command each, one JSON result per process.

    search      Trainer.hyperparameter_search(backend="ray") over the teacher search space (the HF NER recipe)
    distill     online distillation: a Trainer whose compute_loss runs the teacher on every step
    throughput  one epoch of a Trainer on the teacher stage's model and sentences, then its validation F1

Every sub-command runs the peer configured one of two ways (--peer):

    default     the Hugging Face defaults: an fp32 Trainer (transformers 5's default optimizer, adamw_torch_fused),
                and for `search` Ray's FIFO over the configs given (no scheduler, as hyperparameter_search runs
                by default)
    tuned       as an expert would set it up: bf16 wherever tuner's `auto` precision uses bf16 (a CPU with
                AVX512-BF16 or AMX, a GPU with bf16), optim="adamw_torch_fused", and for `search` the search tuner
                runs: OptunaSearch with TPE at the same seed and start-up trials, ASHA with the same rungs, the same
                trial count

and --batching random (random batches padded per batch, the Trainer's default) or length (group_by_length).

Run by bench/run_benchmarks.py; every sub-command takes --data, the sizes and --out (see bench/common.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (BATCH_SIZE, BATCHINGS, PEERS, THROUGHPUT_HPARAMS, TRAIN_SEED_FLAG,  # noqa: E402
                          command_parser, non_embedding_parameters, positive_int, run_settings, selected_sentences,
                          train_seed, write_result)

import datasets  # noqa: E402
import torch  # noqa: E402
from seqeval.metrics import f1_score  # noqa: E402
from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,  # noqa: E402
                          TrainerCallback, TrainingArguments)

from tuner.config import IGNORE_INDEX, usable_cpus  # noqa: E402
from tuner.data import CONLL_LABELS  # noqa: E402
from tuner.models import cut_student, load_model, load_tokenizer, packaged_minilm_path  # noqa: E402
from tuner.spaces import load_space  # noqa: E402
from tuner.stages import teacher as teacher_stage  # noqa: E402
from tuner.stages.student import distillation_loss, trained_learning_rate  # noqa: E402
from tuner.task import load_task  # noqa: E402
from tuner.training import evaluate, select_device, uses_bf16  # noqa: E402


LABELS = list(CONLL_LABELS)
# transformers 5 has no warmup_ratio argument: a float below 1 in warmup_steps is the warmup ratio.
HF_NAMES = {"warmup_ratio": "warmup_steps"}


# --- the standard HF token-classification recipe ------------------------------------------------------------

def hf_dataset(sentences, tokenizer, max_length: int) -> datasets.Dataset:
    """Words tokenized with is_split_into_words; each word's label on its first sub-token, -100 elsewhere."""
    label_to_id = {label: i for i, label in enumerate(LABELS)}
    raw = datasets.Dataset.from_dict({"tokens": [list(s.words) for s in sentences],
                                      "ner_tags": [[label_to_id[t] for t in s.tags] for s in sentences]})

    def tokenize_and_align_labels(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        encoded["labels"] = []
        for i, tags in enumerate(batch["ner_tags"]):
            previous, row = None, []
            for word in encoded.word_ids(i):
                row.append(IGNORE_INDEX if word is None or word == previous else tags[word])
                previous = word
            encoded["labels"].append(row)
        return encoded

    return raw.map(tokenize_and_align_labels, batched=True, remove_columns=raw.column_names)


def compute_metrics(eval_pred) -> dict:
    """Entity-level F1 (seqeval) over the positions that carry a label (first sub-tokens)."""
    logits, labels = eval_pred
    predictions = logits.argmax(-1)
    gold = [[LABELS[y] for y in row if y != IGNORE_INDEX] for row in labels]
    predicted = [[LABELS[p] for p, y in zip(prow, row) if y != IGNORE_INDEX] for prow, row in zip(predictions, labels)]
    return {"f1": f1_score(gold, predicted, zero_division=0)}


def model_init():
    return AutoModelForTokenClassification.from_pretrained(
        packaged_minilm_path(), num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)})


def ray_space(space) -> dict:
    """The YAML search space as ray.tune domains, under TrainingArguments' names."""
    from ray import tune

    domains = {}
    for p in space.params:
        if p.type == "choice":
            domain = tune.choice(list(p.values))
        elif p.type == "int":
            domain = tune.randint(int(p.low), int(p.high) + 1)
        else:
            domain = (tune.loguniform if p.type == "loguniform" else tune.uniform)(p.low, p.high)
        domains[HF_NAMES.get(p.name, p.name)] = domain
    return domains


def peer_arguments(args, output_dir: str, **fields) -> TrainingArguments:
    """The peer's TrainingArguments (see the module's docstring), batch size 16, plus ``fields``."""
    settings = {"train_sampling_strategy": "group_by_length" if args.batching == "length" else "random"}
    if args.peer == "tuned":
        device = select_device()  # the Trainer takes bf16 on a CPU only with use_cpu
        settings.update(bf16=uses_bf16(device), optim="adamw_torch_fused", use_cpu=device == "cpu")
    return TrainingArguments(output_dir=output_dir, per_device_train_batch_size=BATCH_SIZE, disable_tqdm=True,
                             **settings, **fields)


def tuned_search(trials: int, seed: int, epochs: int) -> dict:
    """hyperparameter_search's keyword arguments for the search tuner runs, from Ray and Optuna's own classes:
    OptunaSearch over TPE (tuner's seed and start-up trials) and ASHA (tuner's rungs, on each epoch's evaluation)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tuner.search import DEFAULT_METHOD, startup_trials

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials, DEFAULT_METHOD))
    return {"search_alg": OptunaSearch(metric="objective", mode="max", sampler=sampler),
            "scheduler": ASHAScheduler(metric="objective", mode="max", time_attr="training_iteration", max_t=epochs,
                                       grace_period=DEFAULT_METHOD.grace(epochs),
                                       reduction_factor=DEFAULT_METHOD.reduction_factor)}


# --- sub-commands ---------------------------------------------------------------------------------------------

def search(args) -> dict:
    """Trainer.hyperparameter_search with Ray, one trial at a time on all CPUs. The default peer: FIFO over the
    configs given (Ray's BasicVariantGenerator with them as points_to_evaluate, instead of its random draws), so it
    trains what tuner's TPE sampled. The tuned peer: its own TPE and ASHA (``tuned_search``), --trials trials."""
    import ray
    from ray.tune.search.basic_variant import BasicVariantGenerator

    settings = run_settings(args)
    tokenizer = load_tokenizer("minilm")
    sentences = selected_sentences(settings)
    max_length = settings.profile.max_length
    domains = ray_space(load_space(teacher_stage.STAGE, settings.space_file(teacher_stage.STAGE.name)))
    if args.peer == "tuned":
        trials, algorithms = args.trials, tuned_search(args.trials, args.seed, args.epochs)
    else:
        configs = [{HF_NAMES.get(k, k): v for k, v in c.items()} for c in json.loads(args.configs.read_text())]
        trials, algorithms = len(configs), {"search_alg": BasicVariantGenerator(points_to_evaluate=configs)}
    with tempfile.TemporaryDirectory(prefix="hf-search-") as work:
        # warmup_steps: a float, or the trial's ratio is cast to int 0. The tuned peer saves no checkpoint (ASHA
        # resumes nothing; the best config is retrained), the default one keeps the Trainer's checkpointing.
        training_args = peer_arguments(args, work, num_train_epochs=args.epochs, eval_strategy="epoch",
                                       do_eval=True, warmup_steps=0.0, seed=args.seed,
                                       **({"save_strategy": "no"} if args.peer == "tuned" else {}))
        trainer = Trainer(model_init=model_init, args=training_args,
                          train_dataset=hf_dataset(sentences["train"], tokenizer, max_length),
                          eval_dataset=hf_dataset(sentences["validation"], tokenizer, max_length),
                          data_collator=DataCollatorForTokenClassification(tokenizer),
                          processing_class=tokenizer, compute_metrics=compute_metrics)
        ray.init(address="local", num_cpus=usable_cpus(), _node_ip_address="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)
        try:
            started = time.perf_counter()
            best = trainer.hyperparameter_search(
                hp_space=lambda _: domains, compute_objective=lambda metrics: metrics["eval_f1"],
                n_trials=trials, direction="maximize", backend="ray", **algorithms,
                resources_per_trial={"cpu": usable_cpus()}, storage_path=work, name="hf_search", verbose=0)
            wall = time.perf_counter() - started
            frames = best.run_summary.trial_dataframes
        finally:
            ray.shutdown()
    best_f1 = max(float(frame["objective"].max()) for frame in frames.values() if "objective" in frame)
    return {"search_wall_seconds": wall, "best_val_f1": best_f1, "best_config": best.hyperparameters,
            "trials": len(frames), "epochs_run": sum(len(frame) for frame in frames.values()),
            "configs": [dict(t.config) for t in best.run_summary.trials], "peer": args.peer,
            "batching": args.batching, "bf16": training_args.bf16,
            "optim": getattr(training_args.optim, "value", training_args.optim)}


class EpochTimer(TrainerCallback):
    """Wall time of each training epoch, and optionally tuner's word-level validation F1 after each."""

    def __init__(self, scorer=None):
        self.scorer, self.seconds, self.scores, self.started = scorer, [], [], None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)
        if self.scorer is not None:
            self.scores.append(self.scorer(model))
            model.train()


class DistillationTrainer(Trainer):
    """The usual online distillation: the teacher runs on every training batch (eval mode, no grad)."""

    def __init__(self, *args, teacher, temperature: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.temperature, self.alpha = teacher.eval(), temperature, alpha
        self.teacher_seconds = 0.0  # the teacher's forward passes, summed: what caching its logits saves

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        features = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        outputs = model(**features)
        synchronize(outputs.logits.device)
        started = time.perf_counter()
        with torch.no_grad():
            teacher_logits = self.teacher(**features).logits
        synchronize(teacher_logits.device)
        self.teacher_seconds += time.perf_counter() - started
        loss = distillation_loss(outputs.logits, teacher_logits, inputs["labels"], self.temperature, self.alpha)
        return (loss, outputs) if return_outputs else loss


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer around the teacher's forward times the forward (a CPU runs
    it synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def token_features(encoded) -> list:
    """tuner's encoded sentences as Trainer features (the collator pads them per batch)."""
    return [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
            for ids, labels in zip(encoded.input_ids, encoded.labels)]


def distill(args) -> dict:
    """One trial of tuner's best student config, trained by a Trainer that runs the teacher every step, with
    ``--train-seed`` as the student's seed (initialisation, data order, dropout)."""
    student_result = json.loads((args.student / "result.json").read_text())
    hparams = student_result["hyperparameters"]
    settings = run_settings(args, stage="student", teacher=args.teacher)
    teacher = load_model(args.teacher)
    task, tokenizer = load_task(settings, teacher)
    seed = train_seed(args)
    torch.manual_seed(seed)
    started = time.perf_counter()
    # tuner's initialisation and rate for this config: the same teacher layers and the depth-scaled learning rate
    student = cut_student(teacher, student_result["num_layers"], student_result["factor_dim"],
                          reach=float(hparams.get("layer_reach", 1.0)))
    learning_rate = trained_learning_rate(hparams, teacher.config.num_hidden_layers, student_result["num_layers"])
    timer = EpochTimer(lambda model: evaluate(model, task.validation, task.labels, settings.profile.eval_batch_size,
                                              task.pad_token_id, "cpu", "fp32")["f1"])  # as it trains: fp32
    with tempfile.TemporaryDirectory(prefix="hf-distill-") as work:
        training_args = peer_arguments(
            args, work, num_train_epochs=args.epochs, learning_rate=learning_rate,
            weight_decay=hparams["weight_decay"], warmup_steps=float(hparams["warmup_ratio"]), save_strategy="no",
            seed=seed)
        trainer = DistillationTrainer(model=student, args=training_args, train_dataset=token_features(task.train),
                                      data_collator=DataCollatorForTokenClassification(tokenizer), callbacks=[timer],
                                      teacher=teacher, temperature=hparams["temperature"], alpha=hparams["alpha"])
        trainer.train()
    wall = time.perf_counter() - started
    return {"trial_wall_seconds": wall, "epoch_seconds": timer.seconds, "val_f1_per_epoch": timer.scores,
            "teacher_forward_seconds": trainer.teacher_seconds,
            "best_val_f1": max(timer.scores), "hyperparameters": hparams,
            "num_layers": student_result["num_layers"], "factor_dim": student_result["factor_dim"], "train_seed": seed,
            "peer": args.peer, "batching": args.batching, "bf16": training_args.bf16}


class CountingCollator:
    """DataCollatorForTokenClassification, counting the real and the padded tokens it hands out."""

    def __init__(self, tokenizer):
        self.inner, self.real, self.padded = DataCollatorForTokenClassification(tokenizer), 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += batch["input_ids"].numel()
        return batch


def throughput(args) -> dict:
    """One epoch of the peer's Trainer (batch size 16, --batching) on the teacher's data, at tuner's throughput
    hyperparameters, then its validation F1, so two batchings' speeds are compared at the F1 they reach."""
    settings = run_settings(args)
    tokenizer = load_tokenizer("minilm")
    sentences = selected_sentences(settings)
    train = hf_dataset(sentences["train"], tokenizer, settings.profile.max_length)
    validation = hf_dataset(sentences["validation"], tokenizer, settings.profile.max_length)
    collator, timer = CountingCollator(tokenizer), EpochTimer()
    torch.manual_seed(args.seed)  # the classifier head's initialisation: the Trainer seeds only after it is built
    model = model_init()
    with tempfile.TemporaryDirectory(prefix="hf-throughput-") as work:
        training_args = peer_arguments(args, work, num_train_epochs=1, save_strategy="no", seed=args.seed,
                                       **{HF_NAMES.get(k, k): v for k, v in THROUGHPUT_HPARAMS.items()})
        trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=validation,
                          data_collator=collator, processing_class=tokenizer, compute_metrics=compute_metrics,
                          callbacks=[timer])
        trainer.train()
        real, padded = collator.real, collator.padded  # the evaluation below goes through the collator too
        val_f1 = trainer.evaluate()["eval_f1"]
    seconds = timer.seconds[0]
    return {"train_seconds": seconds, "sentences": len(train), "real_tokens": real, "padded_tokens": padded,
            "tokens_per_second": real / seconds, "sentences_per_second": len(train) / seconds, "val_f1": val_f1,
            "non_embedding_parameters": non_embedding_parameters(model), "threads": torch.get_num_threads(),
            "peer": args.peer, "batching": args.batching, "bf16": training_args.bf16,
            "optim": getattr(training_args.optim, "value", training_args.optim)}


PEER_FLAGS = {"--peer": {"choices": PEERS, "default": "default", "help": "the peer's settings (see above)"},
              "--batching": {"choices": BATCHINGS, "default": "random",
                             "help": "random padded batches (the Trainer's default) or group_by_length"}}
COMMANDS = {
    "search": {"--configs": {"type": Path, "help": "the default peer: JSON list of the configs to train (those "
                                                   "tuner's search sampled)"},
               "--trials": {"type": positive_int, "default": 4, "help": "the tuned peer: trials its TPE samples"},
               **PEER_FLAGS},
    "distill": {"--teacher": {"type": Path, "required": True}, "--student": {"type": Path, "required": True,
                                                                            "help": "tuner's student/best folder"},
                "--train-seed": TRAIN_SEED_FLAG, **PEER_FLAGS},
    "throughput": dict(PEER_FLAGS),
}


def main(argv=None) -> int:
    parser = command_parser("python bench/hf_peer.py", __doc__, COMMANDS)
    args = parser.parse_args(argv)
    if args.command == "search" and args.peer == "default" and args.configs is None:
        parser.error("search --peer default needs --configs (the configs tuner's search sampled)")
    record = {"search": search, "distill": distill, "throughput": throughput}[args.command](args)
    write_result(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
