"""streamrec pipeline package."""
