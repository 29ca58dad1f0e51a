"""Knowledge distillation: the workflow (`distill`), its students
(`students`), objective (`objective`), teacher targets (`targets`) and the
distilling tasks (`tasks`)."""
