
$0b6c1f2e-4d1a-4a53-9a43-6f0e7c9d2a10message.created ûðÌ†¦7*	Ada(RVõHello there"text8*@J	AdaP€æþ‰Z'	imagehttps://example.com/a.png(€ò{}