"""One exception type for bad input, so the CLI can print it as a single line."""


class InputError(Exception):
    """A user-facing problem with an input file, manifest or config.

    The message must name the offending file (or key) and the problem in one line.
    """

    def __init__(self, source, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
