"""``python -m videogpt_fast.train {vqvae,gpt} [flags]`` (also under ``torchrun -m``)."""
from . import main

raise SystemExit(main())
