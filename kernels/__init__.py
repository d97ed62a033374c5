"""streamrec kernels package."""
