"""The classroom model's named recipes: ``python -m diffviz.classroom.train --preset NAME`` (options given on
the command line override them), each with the history that chose it. ``grounded`` trains the shipped model
(``diffviz/classroom/weights/TRAINING.md`` has every run's numbers)."""

from pathlib import Path

from . import model

PRESETS = {
    # the v1 recipe (shipped until v3): epsilon, uniform timesteps, constant lr after warm-up
    "v1": dict(image_size=32, batch=64, lr=5e-4, warmup=500, decay=False, ema=0.999, prediction="epsilon",
               timesteps="uniform", text_layers=0, channels=None, two_share=None),
    # v3, the recipe search's winner (benchmarks/classroom_recipes.md), for 140 minutes of UNet time under
    # `torchrun --nproc_per_node 2` on a 2-core CPU: the shipped VAE as it is, lr 1e-3 decayed to zero,
    # EMA 0.995
    "v3": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=150_000, batch=64,
               lr=1e-3, warmup=300, decay=True, ema=0.995, prediction="epsilon", timesteps="uniform",
               text_layers=0, channels=None, two_share=None, threads=1, max_minutes=140.0, ship_every=20.0,
               save_every=5.0),
    # v3 grown: the finished v3 run's EMA weights with one causal self-attention layer added to the text
    # encoder (starting as the identity), so a word can read the words before it ("square" can read "left
    # of"); trained 65 more minutes on new scenes, 80% of them two-object scenes
    "v3-text": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=150_000, batch=64,
                    lr=5e-4, warmup=200, decay=True, ema=0.995, prediction="epsilon", timesteps="uniform",
                    text_layers=1, channels=None, two_share=0.8, threads=1, max_minutes=65.0,
                    ship_every=30.0, save_every=5.0, seed=1, init_from=Path("checkpoints/classroom_v3")),
    # v3-text with relation pairs: each two-object scene beside its mirror image captioned with the opposite
    # relation, same noise and timestep, so the one word that differs must move the objects; 60 minutes
    "v3-mirror": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=120_000, batch=64,
                      lr=3e-4, warmup=200, decay=True, ema=0.995, prediction="epsilon", timesteps="uniform",
                      text_layers=1, channels=None, two_share=0.7, mirror=True, threads=1, max_minutes=60.0,
                      ship_every=20.0, save_every=5.0, seed=2,
                      init_from=Path("checkpoints/classroom_v3_text")),
    # v3-text at the batch of the GPU continuation that learnt relations (issue 10: batch 512, lr 5e-4; two
    # objects 40% -> 89% between 2.4 M and 3.9 M samples): 256 a process, the CPU's fastest shape
    # (benchmarks/classroom_train_speed.py); 75 minutes left the relation unlearnt (TRAINING.md, "v3-batch")
    "v3-batch": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=120_000, batch=512,
                     lr=5e-4, warmup=100, decay=True, ema=0.995, prediction="epsilon", timesteps="uniform",
                     text_layers=1, channels=None, two_share=0.7, threads=1, max_minutes=75.0,
                     ship_every=15.0, save_every=5.0, seed=3,
                     init_from=Path("checkpoints/classroom_v3_text")),
    # the relation curriculum: v3-batch's weights trained only where the relation is the whole signal:
    # two-object scenes laid out plainly, at the noisiest steps (t >= 700), their x0 error weighted 1; the
    # relation is learnt suddenly after ~40,000 such samples (TRAINING.md, "The relation curriculum")
    "v3-relation": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=30_000,
                        batch=128, lr=1e-3, warmup=50, decay=False, ema=0.99, prediction="epsilon",
                        timesteps="uniform", t_min=700, snr_floor=1.0, text_layers=1, channels=None,
                        two_share=1.0, plain=1.0, threads=1, max_minutes=8.0, ship_every=2.0, save_every=2.0,
                        seed=6, init_from=Path("checkpoints/classroom_v3_batch")),
    # after the curriculum, the whole data again (every timestep, min-SNR weighting, free layouts but 20% of
    # two-object scenes plain), lr decayed to zero: the relation carries over to free layouts
    "v3-relation-mix": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=60_000,
                            batch=128, lr=5e-4, warmup=50, decay=True, ema=0.995, prediction="epsilon",
                            timesteps="uniform", text_layers=1, channels=None, two_share=0.7, plain=0.2,
                            threads=1, max_minutes=25.0, ship_every=10.0, save_every=5.0, seed=7,
                            init_from=Path("checkpoints/classroom_v3_relation")),
    # v3-relation-mix's recipe from scratch in one command (`scripts/train_classroom_cpu.sh` runs the chain
    # "scratch scratch-relation scratch-mix", each stage from the one before it): v3 with its text layer from
    # the start and a share of two-object scenes, then the curriculum and the mix as above; 90 UNet minutes
    "scratch": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=150_000, batch=64,
                    lr=1e-3, warmup=300, decay=True, ema=0.995, prediction="epsilon", timesteps="uniform",
                    text_layers=1, channels=None, two_share=0.7, threads=1, max_minutes=55.0, ship_every=11.0,
                    save_every=5.0),
    # a student's own run (lesson 10): v3's schedule on 16,000 scenes, single objects only, for 8.5 minutes of
    # UNet training on a laptop's CPU (25% two-object scenes and 7 minutes drew 65% of single objects right)
    "student": dict(image_size=32, init_vae=model.WEIGHTS / "vae", vae_steps=0, n_scenes=16_000, batch=64,
                    lr=1e-3, warmup=200, decay=True, ema=0.99, prediction="epsilon", timesteps="uniform",
                    text_layers=0, channels=None, two_share=0.0, max_minutes=8.5, ship_every=1000.0,
                    save_every=1000.0, log_every=20),
}


PRESETS["scratch-relation"] = dict(PRESETS["v3-relation"], init_from=None)  # --init-from the stage before
PRESETS["scratch-mix"] = dict(PRESETS["v3-relation-mix"], init_from=None, max_minutes=27.0, ship_every=9.0)
# the same chain with the grounding loss in every stage ("grounded grounded-relation grounded-mix"): each
# colour, size and shape word's attention map is pulled onto its object, so the maps localise even though
# the text layer is there from the start (without it the colour words' maps never found their objects).
# "grounded" alone is the shipped model: with the loss it learns the relation without the curriculum.
PRESETS.update({f"grounded{stage[7:]}": dict(PRESETS[stage], ground=0.1)
                for stage in ("scratch", "scratch-relation", "scratch-mix")})
