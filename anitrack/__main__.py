from anitrack.cli import main

main()
