"""streamrec worker package."""
