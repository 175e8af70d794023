"""The ``gd`` commands, one module each, above every other layer:

- :mod:`.cli`: ``gd COMMAND ...`` (the table of commands, one-line errors, exit codes);
- :mod:`.command`: a command = a request made of option groups + the function that runs it (the command line
  and the Python API are two views of the same request);
- :mod:`.sample`, :mod:`.upsample`, :mod:`.evaluate`, :mod:`.sweep`, :mod:`.demo`, :mod:`.export`: the product
  commands; ``sweep`` and ``demo`` build ``gd sample`` / ``gd sweep`` requests rather than re-declaring options;
- :mod:`.fit`: ``gd fit | validate | test | predict`` (LightningCLI).
"""
