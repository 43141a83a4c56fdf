"""The trivial tool of the benchmarks: ``eval(echo(<int>), <int>)`` returns its argument."""


class Echo:
    def echo(self, x: int) -> int:
        return x


if __name__ == "__main__":
    from toolbus.adapter import run

    run(Echo)
