from jwtfs.cli import run

run()
