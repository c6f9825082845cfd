"""Pure formatting: numbers, durations and metrics as text, and the renderables (rich Text, Table,
Group) the screens show for a model, a data set, a draft run and its plan. No widgets here, no
terminal needed: what a screen says can be tested without running the app."""
