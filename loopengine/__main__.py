from loopengine.cli import main

main()
