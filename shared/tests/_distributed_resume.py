"""Run under accelerate with 2 CPU processes: train, interrupt, resume; every rank reports its state."""

import json
import sys
from pathlib import Path

from transformers import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from _callback_fixtures import ParameterTrace, tiny_dataset

from paperpack.core.hf import tiny_causal_lm, training_args
from paperpack.core.testing.resume import StopAtStep


def main(out: Path) -> None:
    _, tokenizer = tiny_causal_lm()
    dataset = tiny_dataset(tokenizer)
    settings = dict(
        max_steps=6,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        save_steps=3,
        seed=0,
        disable_tqdm=True,
    )

    def run(folder, stop=None, resume=None):
        callback = ParameterTrace()
        callbacks = [callback] + ([StopAtStep(stop)] if stop else [])
        trainer = Trainer(
            model=tiny_causal_lm()[0],
            args=training_args(out / folder, **settings),
            train_dataset=dataset,
            callbacks=callbacks,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, callback

    trainer, full = run("full")
    run("interrupted", stop=3)
    trainer, resumed = run("interrupted", resume=str(out / "interrupted" / "checkpoint-3"))
    rank = trainer.args.process_index
    report = {
        "rank": rank,
        "world": trainer.args.world_size,
        "full": [t.tolist() for t in full.trace],
        "resumed": [t.tolist() for t in resumed.trace],
        "steps": resumed.steps,
        "restored_from": resumed.restored_from,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
