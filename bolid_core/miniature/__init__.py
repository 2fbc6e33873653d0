"""The miniature BoLID: a synthetic people world small enough for a CPU, where the pack's own trainer, body VAE,
adapter and attention are trained end to end and the body ID's claim is measured from generated pixels."""
