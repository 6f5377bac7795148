"""``python -m lstmfast [demo|text|bench] [options]``: the package's command line.

Each subcommand lives in its own module with a ``main(argv)``; they are imported only when
chosen, so ``--help`` stays fast and an optional module's absence breaks only its command.
"""
import importlib
import sys

# name -> (module, one-line description)
COMMANDS = {
    "demo": ("lstmfast.apps.demo", "vanishing gradients: a tanh RNN vs an LSTM on a long-range "
                              "recall task (default; about a minute)"),
    "text": ("lstmfast.apps.textlm", "a character-level LSTM language model trained on this "
                                "Python's own standard library source"),
    "bench": ("lstmfast.bench", "speed benchmark of the layers (forwards its options)"),
}
DEFAULT = "demo"


def usage():
    lines = ["usage: python -m lstmfast [COMMAND] [options]", "",
             "Fast CPU LSTM/GRU/RNN layers with a numpy API: demos and benchmark.", "",
             "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<7}{text}")
    lines += ["", f"With no command, runs '{DEFAULT}'. 'python -m lstmfast COMMAND --help' "
              "lists a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv and argv[0] in COMMANDS:
        name, argv = argv[0], argv[1:]
    elif argv and not argv[0].startswith("-"):
        print(usage(), file=sys.stderr)
        print(f"\nerror: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    else:
        name = DEFAULT   # options alone go to the default command
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise   # the module exists but something it imports does not
        print(f"error: the '{name}' command is not available in this installation "
              f"({module_name} is missing)", file=sys.stderr)
        return 1
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
