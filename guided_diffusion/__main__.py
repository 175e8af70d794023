"""``python -m guided_diffusion COMMAND ...`` is ``gd COMMAND ...``."""
from guided_diffusion.commands.cli import main

if __name__ == "__main__":
    main()
