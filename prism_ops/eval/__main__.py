from ..cli.eval import main

main()
