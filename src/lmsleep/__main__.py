from lmsleep.cli import main

main()
