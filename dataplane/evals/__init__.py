"""Running eval cases on the executor and grading their answers."""
