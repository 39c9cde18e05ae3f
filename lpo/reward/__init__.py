"""Step reward models: the Latent Reward Model, SPO's pixel step reward, and their training."""
