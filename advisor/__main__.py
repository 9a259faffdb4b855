from advisor.cli.fastpath import main

main()
