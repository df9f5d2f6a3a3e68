"""CelebA images: the official layout and Hub streams, the model's preprocessing, image files and grids."""
